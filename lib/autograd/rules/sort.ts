// Backward rules of the scans and sorts (lib/ops/sort.ts).
import { zeros } from '../../ops/creation';
import { scatterAdd } from '../../ops/indexing';
import { cumsum } from '../../ops/sort';
import { registerGradient } from '../registry';

// out[i] sums x[j] over j <= i (exclusive: j < i), so x[j] receives the gradients of every i it
// reached: the running sum of the gradient taken the other way round
registerGradient<{ axis: number; reverse: boolean; exclusive: boolean }>('cumsum', ({ grad, attrs }) => [
  cumsum(grad, attrs.axis, { reverse: !attrs.reverse, exclusive: attrs.exclusive }),
]);

// values = gather(x, axis, indices): each picked element receives its value's gradient (saved:
// indices); sort picks every element once, topk k of each row
for (const name of ['topk', 'sort']) {
  registerGradient<{ axis: number; shape: number[] }>(name, ({ grad, saved: [indices], attrs }) => {
    const z = zeros(attrs.shape, { dtype: grad.dtype, device: grad.device });
    const r = scatterAdd(z, attrs.axis, indices, grad);
    z.dispose();
    return [r];
  });
}
