// Backward rules of the routing ops (lib/ops/routing.ts).
import { op } from '../../native';
import { Tensor } from '../../tensor';
import { empty } from '../../ops/util';
import { registerGradient } from '../registry';

// the gate weights' gradient reaches the logits through the normalisation and the softmax /
// sigmoid of the chosen experts (saved: scores, indices); the selection itself is discrete
registerGradient<{ score: 'softmax' | 'sigmoid'; normalize: boolean; routeScale: number }>('routerGate', ({ grad, saved: [scores, indices], attrs }) => {
  const dlogits: Tensor = empty(scores.shape.slice(), scores.dtype, scores.device);
  op.routerGateBackward({ dlogits, scores, indices, dweights: grad, score: attrs.score, normalize: attrs.normalize, routeScale: attrs.routeScale });
  return [dlogits];
});
