// Backward rules of the routing ops (lib/ops/routing.ts).
import { op } from '../../native';
import { Tensor } from '../../tensor';
import { empty } from '../../ops/util';
import { zeros } from '../../ops/creation';
import { cast } from '../../ops/shape';
import { registerGradient } from '../registry';

// the gate weights' gradient reaches the logits through the normalisation and the softmax /
// sigmoid of the chosen experts (saved: scores, indices); the selection itself is discrete
registerGradient<{ score: 'softmax' | 'sigmoid'; normalize: boolean; routeScale: number }>('routerGate', ({ grad, saved: [scores, indices], attrs }) => {
  const dlogits: Tensor = empty(scores.shape.slice(), scores.dtype, scores.device);
  op.routerGateBackward({ dlogits, scores, indices, dweights: grad, score: attrs.score, normalize: attrs.normalize, routeScale: attrs.routeScale });
  return [dlogits];
});

// auxLoss and zLoss (one fused forward, routerLosses): dlogits from either loss's gradient, the
// other's 0 (saved: the stats-dtype logits, lse [T], f [E])
for (const [name, which] of [['routerAuxLoss', 0], ['routerZLoss', 1]] as const) {
  registerGradient<{ score: 'softmax' | 'sigmoid' }>(name, ({ grad, saved: [logits, lse, f], attrs }) => {
    const dlogits: Tensor = empty(logits.shape.slice(), logits.dtype, logits.device);
    const zero = zeros([], { dtype: logits.dtype, device: logits.device });
    const g = grad.dtype === logits.dtype ? grad : cast(grad, logits.dtype);
    try {
      op.routerLossesBackward({ dlogits, logits, lse, fraction: f, daux: which === 0 ? g : zero, dz: which === 1 ? g : zero, score: attrs.score });
    } finally {
      zero.dispose();
      if (g !== grad) g.dispose();
    }
    return [dlogits];
  });
}
