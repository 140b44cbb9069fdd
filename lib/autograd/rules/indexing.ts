// Backward rules of the index ops (lib/ops/indexing.ts).
import { DType } from '../../dtype';
import { Device } from '../../device';
import { zeros } from '../../ops/creation';
import { gather, scatterAdd } from '../../ops/indexing';
import { contiguous, expand, reshape } from '../../ops/shape';
import { registerGradient } from '../registry';

// the rows each id read receive its gradient; repeated ids accumulate (saved: ids)
registerGradient<{ vocab: number; dim: number; dtype: DType; device: Device }>('embedding', ({ grad, saved: [ids], attrs }) => {
  const { vocab, dim } = attrs;
  const n = ids.size;
  const flat = reshape(ids, [n, 1]);
  const wide = expand(flat, [n, dim]);
  const idx = contiguous(wide);
  const g2 = reshape(grad, [n, dim]);
  const table = zeros([vocab, dim], { dtype: attrs.dtype, device: attrs.device });
  const r = scatterAdd(table, 0, idx, g2);
  [flat, wide, idx, g2, table].forEach((t) => t.dispose());
  return [null, r];
});

// saved: index
registerGradient<{ axis: number; shape: number[]; dtype: DType; device: Device }>('gather', ({ grad, saved: [index], attrs }) => {
  const z = zeros(attrs.shape, { dtype: attrs.dtype, device: attrs.device });
  const r = scatterAdd(z, attrs.axis, index, grad);
  z.dispose();
  return [r, null];
});

// out = x with src added at index (saved: index): x gets g, src gets g gathered at index
registerGradient<{ axis: number }>('scatterAdd', ({ grad, saved: [index], attrs }) => [grad.alias(), null, gather(grad, attrs.axis, index)]);
