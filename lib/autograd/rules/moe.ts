// Backward rules of the mixture-of-experts ops (lib/ops/moe.ts). Each is the other gather over
// the same plan (no atomics), or the grouped GEMM with the other operand transposed.
import { Tensor } from '../../tensor';
import { reshape } from '../../ops/shape';
import { groupedMatmul, groupedMatmulWeightGrad, moeCombineRows, moeCombineWeightGrad, moeGatherRows } from '../../ops/moe';
import { registerGradient } from '../registry';

// buffer[row(t, k)] = x[t]  ->  dx[t] = sum over kept k of dbuffer[row(t, k)]
registerGradient('moeDispatch', ({ grad, saved: [rows] }) => [moeCombineRows(grad, rows, null)]);

// out[t] = sum_k w[t, k] y[row(t, k)]  ->  dy[row] = w[t, k] dout[t] (0 for empty rows),
// dw[t, k] = dot(y[row(t, k)], dout[t]) (0 when dropped)
registerGradient('moeCombine', ({ grad, saved: [y, w, rows, sources], needs }) => {
  const [T, K] = rows.shape;
  let dy: Tensor | null = null;
  if (needs[0]) {
    const wf = reshape(w, [T * K]);
    dy = moeGatherRows(grad, sources, wf, K);
    wf.dispose();
  }
  return [dy, needs[1] ? moeCombineWeightGrad(y, rows, grad) : null];
});

// out_e = a_e op(b_e)  ->  da_e = g_e op(b_e)^T, db_e = a_e^T g_e (transB: g_e^T a_e)
registerGradient<{ transB: boolean }>('groupedMatmul', ({ grad, saved: [a, b, offsets], attrs, needs }) => [
  needs[0] ? groupedMatmul(grad, b, offsets, { transB: !attrs.transB }) : null,
  needs[1] ? (attrs.transB ? groupedMatmulWeightGrad(grad, a, offsets) : groupedMatmulWeightGrad(a, grad, offsets)) : null,
]);
