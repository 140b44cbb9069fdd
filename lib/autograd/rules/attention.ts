// Backward rules of the fused attention ops and RoPE (lib/ops/attention.ts).
import { DType } from '../../dtype';
import { op } from '../../native';
import { Tensor } from '../../tensor';
import { zeros } from '../../ops/creation';
import { mul } from '../../ops/elementwise';
import { sum } from '../../ops/reduce';
import { cast, concat, reshape } from '../../ops/shape';
import { empty } from '../../ops/util';
import { registerGradient } from '../registry';

type Mask = 'global' | 'sliding' | 'block';
interface AttnAttrs {
  mask: Mask;
  causal: boolean;
  window: number;
  scale: number;
  hasKeyPadding: boolean;
}

const statsDType = (d: DType): DType => (d === 'float64' ? 'float64' : 'float32');

/** Zeroed float32 (float64) dq, dk, dv that the attention backward kernels add into. */
function gradAccumulators(q: Tensor, k: Tensor, v: Tensor): Tensor[] {
  const dtype = statsDType(q.dtype);
  return [q, k, v].map((t) => zeros(t.shape.slice(), { dtype, device: q.device }));
}

// saved: q, k, v, out, lse[, keyPadding][, queryIndex][, queryCount]; the engine casts dq/dk/dv to the inputs' dtype
for (const name of ['globalAttention', 'localAttention']) {
  registerGradient<AttnAttrs & { hasQueryIndex: boolean; hasQueryCount: boolean }>(name, ({ grad, saved, attrs }) => {
    const [q, k, v, out, lse] = saved;
    let at = 5;
    const keyPadding = attrs.hasKeyPadding ? saved[at++] : undefined;
    const queryIndex = attrs.hasQueryIndex ? saved[at++] : undefined;
    const queryCount = attrs.hasQueryCount ? saved[at++] : undefined;
    const [dq, dk, dv] = gradAccumulators(q, k, v);
    op.attentionBackward({ dq, dk, dv, q, k, v, out, dout: grad, lse, mask: attrs.mask, causal: attrs.causal,
      window: attrs.window, scale: attrs.scale, keyPadding, queryIndex, queryCount });
    return [dq, dk, dv];
  });
}

// saved: q, k, v, outLocal, outGlobal, lseLocal, lseGlobal, gates[, keyPadding][, globalRows]
registerGradient<AttnAttrs & { hasRows: boolean; perHead: boolean }>('dualAttention', ({ grad, saved, attrs }) => {
  const [q, k, v, outLocal, outGlobal, lseLocal, lseGlobal, gates] = saved;
  const keyPadding = attrs.hasKeyPadding ? saved[8] : undefined;
  const globalRows = attrs.hasRows ? saved[attrs.hasKeyPadding ? 9 : 8] : undefined;
  const [dq, dk, dv] = gradAccumulators(q, k, v);
  // one pass over K/V for both paths (CPU; CUDA bf16 head dims 32/64/128), else the two
  // paths' backwards with gate-scaled douts inside the CUDA backend
  op.dualAttentionBackward({ dq, dk, dv, q, k, v, outLocal, outGlobal, dout: grad, lseLocal, lseGlobal, gates,
    mask: attrs.mask, causal: attrs.causal, window: attrs.window, scale: attrs.scale, keyPadding, globalRows });
  // d g_local = sum_d dout * out_local (summed over heads for shared gates), in float32 at
  // least: these sums cancel heavily, and bfloat16 products would lose them
  const [B, , Sq] = q.shape;
  const g32 = grad.dtype === 'bfloat16' ? cast(grad, 'float32') : grad;
  const gsum = (o: Tensor) => {
    const o32 = o.dtype === 'bfloat16' ? cast(o, 'float32') : o;
    const t = sum(mul(g32, o32), attrs.perHead ? [3] : [1, 3], { keepDims: true });
    return attrs.perHead ? t : reshape(t, [B, Sq, 1]);
  };
  const dgates = concat([gsum(outLocal), gsum(outGlobal)], attrs.perHead ? 3 : 2);
  return [dq, dk, dv, dgates];
});

// saved: q, k, v, outLocal, outGlobal, lseLocal, lseGlobal, gates, indices: one op gives dq, dk,
// dv of both paths and dgates (float32 / float64, cast to the gates' dtype by the engine)
registerGradient<{ mask: Mask; causal: boolean; window: number; scale: number; segment: number }>('dualSegmentAttention', ({ grad, saved, attrs }) => {
  const [q, k, v, outLocal, outGlobal, lseLocal, lseGlobal, gates, indices] = saved;
  const [dq, dk, dv] = gradAccumulators(q, k, v);
  const dgates = empty(gates.shape.slice(), statsDType(q.dtype), q.device);
  op.dualSegmentAttentionBackward({ dq, dk, dv, dgates, q, k, v, outLocal, outGlobal, dout: grad, lseLocal, lseGlobal, gates,
    indices, mask: attrs.mask, causal: attrs.causal, window: attrs.window, scale: attrs.scale, segment: attrs.segment });
  return [dq, dk, dv, dgates];
});

// the inverse rotation (saved: positions)
registerGradient<{ base: number }>('rope', ({ grad, saved: [positions], attrs }) => {
  const dx = empty(grad.shape, grad.dtype, grad.device);
  op.rope({ out: dx, x: grad, positions, base: attrs.base, inverse: true });
  return [dx];
});
