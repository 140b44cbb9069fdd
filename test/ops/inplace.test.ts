import * as dr from '../../lib';

describe('in-place ops', () => {
  test('copy_ broadcasts, casts and moves; every view of the storage sees it; it returns x', () => {
    const x = dr.zeros([2, 3]);
    const v = x.slice([1, 0], [1, 3]);
    expect(x.copy_(dr.tensor([1, 2, 3]))).toBe(x);
    expect(x.arraySync()).toEqual([[1, 2, 3], [1, 2, 3]]);
    dr.copy_(v, dr.tensor(new Int32Array([7, 8, 9]), [1, 3]));
    expect(x.arraySync()).toEqual([[1, 2, 3], [7, 8, 9]]);
    expect(() => x.copy_(dr.ones([4]))).toThrow(dr.ShapeError);
    dr.dispose([x, v]);
  });

  test('fill_, zero_, and arithmetic with scalars and broadcast tensors', () => {
    const x = dr.full([2, 2], 3);
    x.add_(dr.tensor([1, 2]), { alpha: 10 });
    expect(x.arraySync()).toEqual([[13, 23], [13, 23]]);
    x.sub_(3).mul_(dr.tensor([[2], [1]])).div_(2);
    expect(x.arraySync()).toEqual([[10, 20], [5, 10]]);
    x.sub_(1, { alpha: 5 });
    expect(x.arraySync()).toEqual([[5, 15], [0, 5]]);
    x.fill_(-1);
    expect(x.arraySync()).toEqual([[-1, -1], [-1, -1]]);
    x.zero_();
    expect(x.arraySync()).toEqual([[0, 0], [0, 0]]);
    const i = dr.tensor(new Int32Array([1, 2]));
    i.add_(3).mul_(2);
    expect(i.arraySync()).toEqual([8, 10]);
    expect(() => i.div_(2)).toThrow(dr.DTypeError);
    expect(() => i.add_(0.5)).toThrow(dr.DTypeError);
    dr.dispose([x, i]);
  });

  test('an operand overlapping x is read before x is written', () => {
    const x = dr.tensor([[1, 2], [3, 4]]);
    x.add_(x.T); // x + x^T, not a half-updated mix
    expect(x.arraySync()).toEqual([[2, 5], [5, 8]]);
    x.mul_(x);
    expect(x.arraySync()).toEqual([[4, 25], [25, 64]]);
    x.dispose();
  });

  test('refused: leaves that require grad (outside noGrad), expanded targets', () => {
    const w = dr.ones([3]).requiresGrad_();
    expect(() => w.mul_(2)).toThrow(/in-place ops are not recorded by autograd/);
    dr.noGrad(() => w.mul_(2));
    expect(w.arraySync()).toEqual([2, 2, 2]);
    const e = dr.ones([1, 3]).expand([4, 3]);
    expect(() => e.add_(1)).toThrow(/expanded view/);
    const x = dr.ones([3]);
    expect(() => x.add_(w)).toThrow(/the operand requires grad/);
    dr.dispose([w, e, x]);
  });
});
