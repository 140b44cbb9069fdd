// Backward rules of the view and layout ops (lib/ops/shape.ts).
import { Tensor } from '../../tensor';
import { zeros } from '../../ops/creation';
import { copy_ } from '../../ops/inplace';
import { contiguous, narrow, permute, reshape, slice } from '../../ops/shape';
import { sumToShape } from '../grad_utils';
import { registerGradient } from '../registry';

// reshape-like views: the gradient takes the source's shape back
for (const name of ['reshape', 'view', 'unsqueeze', 'squeeze', 'transpose']) {
  registerGradient<{ shape: number[] }>(name, ({ grad, attrs }) => [reshape(grad, attrs.shape)]);
}

// copies and moves: the gradient passes through (the engine casts it back to the input's dtype and device)
for (const name of ['contiguous', 'clone', 'to']) registerGradient(name, ({ grad }) => [grad.alias()]);

registerGradient<{ inverse: number[] }>('permute', ({ grad, attrs }) => [permute(grad, attrs.inverse)]);

registerGradient<{ shape: number[] }>('expand', ({ grad, attrs }) => [sumToShape(grad, attrs.shape)]);

// a box view: zeros of the source's shape with the gradient copied into the box
function boxGrad(shape: number[], g: Tensor, begin: number[]): Tensor {
  const z = zeros(shape, { dtype: g.dtype, device: g.device });
  const box = slice(z, begin, g.shape.slice());
  copy_(box, g);
  box.dispose();
  return z;
}
for (const name of ['narrow', 'slice']) {
  registerGradient<{ shape: number[]; begin: number[] }>(name, ({ grad, attrs }) => [boxGrad(attrs.shape, grad, attrs.begin)]);
}

registerGradient<{ axis: number; starts: number[]; sizes: number[] }>('concat', ({ grad, attrs }) =>
  attrs.starts.map((start, i) => {
    const part = narrow(grad, attrs.axis, start, attrs.sizes[i]);
    const c = contiguous(part);
    part.dispose();
    return c;
  }));
