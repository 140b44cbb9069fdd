// Backward rule of matmul (lib/ops/linalg.ts).
import { matmul } from '../../ops/linalg';
import { sumToShape } from '../grad_utils';
import { registerGradient } from '../registry';

// out = alpha op(A) op(B) (saved: A, B): d op(A) = alpha g op(B)^T, d op(B) = alpha op(A)^T g,
// and a stored-transposed operand gets the transposed product (computed as such, no copy).
registerGradient<{ transA: boolean; transB: boolean; alpha: number }>('matmul', ({ grad: g, saved: [a, b], attrs, needs }) => {
  const { transA, transB, alpha } = attrs;
  const ga = !needs[0] ? null
    : transA ? matmul(b, g, { transA: transB, transB: true, alpha }) : matmul(g, b, { transB: !transB, alpha });
  const gb = !needs[1] ? null
    : transB ? matmul(g, a, { transA: true, transB: transA, alpha }) : matmul(a, g, { transA: !transA, alpha });
  return [ga && sumToShape(ga, a.shape), gb && sumToShape(gb, b.shape)];
});
