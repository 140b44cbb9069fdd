import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as dr from '../../lib';
import { nn, optim } from '../../lib';
import { loadCheckpoint, saveCheckpoint } from '../../lib/train/checkpoint';

class Net extends nn.Module {
  a: nn.Linear;
  b: nn.Linear;
  constructor(g: dr.Generator) {
    super();
    this.a = new nn.Linear(4, 16, { generator: g });
    this.b = new nn.Linear(16, 3, { generator: g });
  }
  forward(x: dr.Tensor): dr.Tensor {
    return dr.tidy(() => this.b.forward(this.a.forward(x).silu()));
  }
}

function steps(model: Net, opt: optim.AdamW, data: dr.Generator, n: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < n; ++i) {
    dr.tidy(() => {
      const x = dr.randn([8, 4], { generator: data });
      const y = dr.randint(0, 3, [8], { generator: data });
      opt.zeroGrad();
      const loss = dr.crossEntropy(model.forward(x), y);
      loss.backward();
      opt.step();
      out.push(loss.item());
    });
  }
  return out;
}

describe('training checkpoints', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dualroute-ckpt-'));
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  test('a round trip is exact and training resumes identically', async () => {
    const data = new dr.Generator(11);
    const model = new Net(new dr.Generator(1));
    const opt = new optim.AdamW(model.parameters(), { lr: 1e-2 });
    steps(model, opt, data, 5);
    const file = path.join(dir, 'run.safetensors');
    await saveCheckpoint(file, { model, optimizer: opt, step: 5, generators: { data }, config: { lr: 1e-2 } });
    const after = steps(model, opt, data, 5);

    const model2 = new Net(new dr.Generator(99));
    const opt2 = new optim.AdamW(model2.parameters(), { lr: 1 });
    const data2 = new dr.Generator(0);
    const { step, config } = await loadCheckpoint(file, { model: model2, optimizer: opt2, generators: { data: data2 } });
    expect(step).toBe(5);
    expect(config).toEqual({ lr: 1e-2 });
    expect(opt2.lr).toBe(1e-2);
    const resumed = steps(model2, opt2, data2, 5);
    expect(resumed).toEqual(after); // bit for bit
    for (const [[, p], [, q]] of model.namedParameters().map((e, i) => [e, model2.namedParameters()[i]] as const)) {
      expect(q.dataSync()).toEqual(p.dataSync());
    }
    [model, model2, opt, opt2].forEach((m) => m.dispose());
  });

  test('loading into a different model names the mismatched keys', async () => {
    const model = new Net(new dr.Generator(1));
    const file = path.join(dir, 'w.safetensors');
    await saveCheckpoint(file, { model });
    const other = new nn.Linear(4, 3);
    await expect(loadCheckpoint(file, { model: other })).rejects.toThrow(/missing keys: weight, bias; unexpected keys: .*a\.weight/);
    model.dispose();
    other.dispose();
  });
});
