// Backward rules of the segment-routing ops (lib/ops/segment.ts).
import { DType } from '../../dtype';
import { op } from '../../native';
import { zeros } from '../../ops/creation';
import { reshape } from '../../ops/shape';
import { empty } from '../../ops/util';
import { registerGradient } from '../registry';

const statsDType = (d: DType): DType => (d === 'float64' ? 'float64' : 'float32');

// saved: q, k, v, out, lse, indices; dq/dk/dv accumulate in float32 (float64), cast by the engine
registerGradient<{ segment: number; causal: boolean; scale: number }>('segmentAttention', ({ grad, saved, attrs }) => {
  const [q, k, v, out, lse, indices] = saved;
  const dtype = statsDType(q.dtype);
  const [dq, dk, dv] = [q, k, v].map((t) => zeros(t.shape.slice(), { dtype, device: q.device }));
  op.segmentAttentionBackward({ dq, dk, dv, q, k, v, out, dout: grad, lse, indices, segment: attrs.segment,
    causal: attrs.causal, scale: attrs.scale });
  return [dq, dk, dv];
});

// dx[j] = dout[segment of j] / (rows in that segment)
registerGradient<{ segment: number; shape: number[] }>('segmentMean', ({ grad, attrs }) => {
  const shape = attrs.shape;
  const S = shape[shape.length - 2], D = shape[shape.length - 1];
  const outer = shape.slice(0, -2).reduce((a, b) => a * b, 1);
  const nseg = Math.ceil(S / attrs.segment);
  const dx = empty(shape, grad.dtype, grad.device);
  const g3 = reshape(grad, [outer, nseg, D]);
  const d3 = reshape(dx, [outer, S, D]);
  op.segmentMean({ out: d3, x: g3, segment: attrs.segment, backward: true });
  if (g3 !== grad) g3.dispose();
  if (d3 !== dx) d3.dispose();
  return [dx];
});
