// Activation modules, for Sequential and configs that name their activation.
import { Tensor } from '../tensor';
import { gelu, relu, silu } from '../ops/elementwise';
import { ValueError, describe } from '../errors';
import { Module } from './module';

export class ReLU extends Module {
  forward(x: Tensor): Tensor {
    return relu(x);
  }
}

/** gelu(x) = x Phi(x) ('none', the erf form) or its tanh approximation ('tanh'). */
export class GELU extends Module {
  constructor(readonly approximate: 'none' | 'tanh' = 'none') {
    super();
    if (approximate !== 'none' && approximate !== 'tanh') throw new ValueError(`GELU: Expected 'none' or 'tanh' for approximate but received ${describe(approximate)}`);
  }
  forward(x: Tensor): Tensor {
    return gelu(x, { approximate: this.approximate });
  }
}

/** silu(x) = x sigmoid(x) (swish). */
export class SiLU extends Module {
  forward(x: Tensor): Tensor {
    return silu(x);
  }
}
