// Backward rules of the fused ops (lib/ops/fused.ts): one kernel each.
import { BiasActivation, addRmsNormBackward, biasActBackward } from '../../ops/fused';
import { registerGradient } from '../registry';

// y of addRmsNorm; inputs h (recorded as x + residual), weight; saved h, rstd[, weight]. The
// gradient h has collected from its other uses (the residual stream) is added in the same kernel.
registerGradient('addRmsNorm', ({ grad, saved: [h, rstd, w], needs, pending }) => {
  const { dx, dweight } = addRmsNormBackward(h, w ?? null, rstd, grad, pending, !!w && needs[1]);
  return [dx, dweight];
}, { foldsInto: 0 });

// saved: x, bias; inputs x, bias
registerGradient<{ act: BiasActivation }>('biasAct', ({ grad, saved: [x, b], attrs, needs }) => {
  const { dx, dbias } = biasActBackward(attrs.act, x, b, grad, needs[1]);
  return [dx, dbias];
});
