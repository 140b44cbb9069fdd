// Backward rules of the row-wise nn ops (lib/ops/nn.ts): each is one fused kernel.
import {
  crossEntropyBackward, layerNormBackward, rmsNormBackward, softmaxBackward, swigluBackward,
} from '../../ops/grad_kernels';
import { registerGradient } from '../registry';

// saved: the output y (softmax, or log-softmax)
registerGradient<{ axis: number }>('softmax', ({ grad, saved: [y], attrs }) => [softmaxBackward(y, grad, attrs.axis, false)]);
registerGradient<{ axis: number }>('logSoftmax', ({ grad, saved: [y], attrs }) => [softmaxBackward(y, grad, attrs.axis, true)]);

// saved: x, rstd[, weight]
registerGradient('rmsNorm', ({ grad, saved: [x, rstd, w], needs }) => {
  const { dx, dweight } = rmsNormBackward(x, w ?? null, rstd, grad, !!w && needs[1]);
  return [dx, dweight];
});

// saved: x, mean, rstd[, weight]; inputs x, weight, bias
registerGradient('layerNorm', ({ grad, saved: [x, mean, rstd, w], needs }) => {
  const r = layerNormBackward(x, w ?? null, mean, rstd, grad, !!w && needs[1], needs[2]);
  return [r.dx, r.dweight, r.dbias];
});

registerGradient('swiglu', ({ grad, saved: [x] }) => [swigluBackward(x, grad)]);

// per-row losses of logits [rows, C] (saved: logits, targets, lse)
registerGradient<{ ignoreIndex: number; smoothing: number }>('crossEntropy', ({ grad, saved: [x, t, lse], attrs }) => [
  crossEntropyBackward(x, t, lse, grad, attrs.ignoreIndex, attrs.smoothing),
]);
