// Index ops: embedding lookup, gather and scatter-add along an axis (torch semantics).
// Indices are int32 and checked by the kernels before anything is read through them: a bad
// one fails the op, and the next read of its result raises an OutOfRangeError naming it.
import { DTypeError, ShapeError, describe } from '../errors';
import { op } from '../native';
import { Tensor } from '../tensor';
import { record } from '../tape';
import { checkTensor, empty, normAxis, sameDevice } from './util';

/** Rows of table [vocab, dim] for int32 ids of any shape: [...ids.shape, dim]. */
export function embedding(ids: Tensor, table: Tensor): Tensor {
  checkTensor(ids, 'embedding', 'ids');
  checkTensor(table, 'embedding', 'table');
  if (ids.dtype !== 'int32') throw new DTypeError(`embedding: Expected int32 ids but received ${describe(ids)}`);
  if (table.ndim !== 2) throw new ShapeError(`embedding: Expected a [vocab, dim] table but received ${describe(table)}`);
  sameDevice('embedding', ids, table);
  const out = empty([...ids.shape, table.shape[1]], table.dtype, table.device);
  op.embedding({ out, ids, table });
  return record(out, 'embedding', [null, table], [ids], { vocab: table.shape[0], dim: table.shape[1], dtype: table.dtype, device: table.device });
}

function checkIndex(op: string, x: Tensor, index: Tensor, axis: number): number {
  checkTensor(x, op, 'x');
  checkTensor(index, op, 'index');
  if (index.dtype !== 'int32') throw new DTypeError(`${op}: Expected an int32 index but received ${describe(index)}`);
  sameDevice(op, x, index);
  const a = normAxis(axis, x.ndim, op);
  if (index.ndim !== x.ndim) throw new ShapeError(`${op}: Expected an index with ${x.ndim} dimensions but received ${describe(index)}`);
  index.shape.forEach((d, i) => {
    if (i !== a && d > x.shape[i]) throw new ShapeError(`${op}: index shape [${index.shape.join(', ')}] exceeds [${x.shape.join(', ')}] in dimension ${i}`);
  });
  return a;
}

/** out[i][j][k] = x[i][index[i][j][k]][k] (for axis 1): out has index's shape. */
export function gather(x: Tensor, axis: number, index: Tensor): Tensor {
  const a = checkIndex('gather', x, index, axis);
  const out = empty(index.shape, x.dtype, x.device);
  op.gather({ out, x, index, axis: a });
  return record(out, 'gather', [x, null], [index], { axis: a, shape: x.shape.slice(), dtype: x.dtype, device: x.device });
}

/** A copy of x with src added at the indexed positions along axis: out[..index[p]..] += src[p]. */
export function scatterAdd(x: Tensor, axis: number, index: Tensor, src: Tensor): Tensor {
  const a = checkIndex('scatterAdd', x, index, axis);
  checkTensor(src, 'scatterAdd', 'src');
  if (src.dtype !== x.dtype) throw new DTypeError(`scatterAdd: Expected src of dtype ${x.dtype} but received ${describe(src)}`);
  if (src.shape.length !== index.shape.length || src.shape.some((d, i) => d !== index.shape[i])) {
    throw new ShapeError(`scatterAdd: Expected src of shape [${index.shape.join(', ')}] (the index's) but received [${src.shape.join(', ')}]`);
  }
  sameDevice('scatterAdd', x, src);
  const out = empty(x.shape, x.dtype, x.device);
  op.copy({ out, x });
  op.scatterAdd({ out, index, src, axis: a });
  return record(out, 'scatterAdd', [x, null, src], [index], { axis: a });
}
