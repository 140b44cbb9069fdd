// Matrix products. matmul follows numpy: 1-d operands are promoted to matrices and the added
// dimension removed again; batch dimensions broadcast. Transposes are flags, not copies.
import { isFloat, promote } from '../dtype';
import { DTypeError, ShapeError, ValueError, describe } from '../errors';
import { op } from '../native';
import { Tensor } from '../tensor';
import { cast, reshape, unsqueeze } from './shape';
import { alloc, allocLike, broadcastShapes, checkOptions, checkTensor, sameDevice, sameShape } from './util';
import { record } from '../tape';

export interface MatmulOptions {
  /** Use a's last two dims transposed. */
  transA?: boolean;
  /** Use b's last two dims transposed. */
  transB?: boolean;
  /** Scales the product (default 1). */
  alpha?: number;
}

// shape[0, n) (not slice: slow on a tensor's frozen shape)
function head(shape: readonly number[], n: number): number[] {
  const r: number[] = [];
  for (let i = 0; i < n; ++i) r.push(shape[i]);
  return r;
}

/** a @ b with batch broadcasting: [..., m, k] @ [..., k, n] -> [..., m, n]. */
export function matmul(a: Tensor, b: Tensor, options: MatmulOptions = {}): Tensor {
  options = checkOptions(options, 'matmul');
  checkTensor(a, 'matmul', 'a');
  checkTensor(b, 'matmul', 'b');
  const device = sameDevice('matmul', a, b);
  const transA = !!options.transA;
  const transB = !!options.transB;
  const alpha = options.alpha ?? 1;
  if (typeof alpha !== 'number' || !Number.isFinite(alpha)) throw new ValueError(`matmul: Expected a finite number for alpha but received ${describe(alpha)}`);
  if (a.ndim === 0 || b.ndim === 0) throw new ShapeError('matmul: operands must have at least one dimension');
  const tmp: Tensor[] = [];
  try {
    let A = a;
    let B = b;
    const d = promote(a.dtype, b.dtype);
    if (!isFloat(d)) throw new DTypeError(`matmul: Expected float tensors but received ${a.dtype} and ${b.dtype}`);
    if (A.dtype !== d) tmp.push((A = cast(A, d)));
    if (B.dtype !== d) tmp.push((B = cast(B, d)));
    const vecA = A.ndim === 1;
    const vecB = B.ndim === 1;
    if (vecA) tmp.push((A = unsqueeze(A, transA ? 1 : 0)));
    if (vecB) tmp.push((B = unsqueeze(B, transB ? 0 : 1)));
    const [m, ka] = transA ? [A.shape[A.ndim - 1], A.shape[A.ndim - 2]] : [A.shape[A.ndim - 2], A.shape[A.ndim - 1]];
    const [kb, n] = transB ? [B.shape[B.ndim - 1], B.shape[B.ndim - 2]] : [B.shape[B.ndim - 2], B.shape[B.ndim - 1]];
    if (ka !== kb) {
      throw new ShapeError(`matmul: inner dimensions differ: a is [${a.shape.join(', ')}]${transA ? ' (transposed)' : ''}, b is [${b.shape.join(', ')}]${transB ? ' (transposed)' : ''} (${ka} vs ${kb})`);
    }
    const batch = A.ndim === 2 && B.ndim === 2 ? [] : broadcastShapes('matmul (batch dims)', head(A.shape, A.ndim - 2), head(B.shape, B.ndim - 2));
    const outShape = [...batch, m, n];
    const out = sameShape(outShape, A.shape) ? allocLike(A) : alloc(outShape, d, device);
    op.matmul({ out, a: A, b: B, transA, transB, alpha, beta: 0 });
    record(out, 'matmul', [A, B], [A, B], { transA, transB, alpha });
    if (!vecA && !vecB) return out;
    const shape = [...batch, ...(vecA ? [] : [m]), ...(vecB ? [] : [n])];
    try {
      return reshape(out, shape);
    } finally {
      out.dispose();
    }
  } finally {
    tmp.forEach((t) => t.dispose());
  }
}
