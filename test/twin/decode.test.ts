// The twin's KV-cache decode (python/dualroute_twin/decode.py, what bench/twin.ts times): its
// logits at every position equal the twin's own full forward, and its greedy tokens equal
// dualroute's cached generation from the same checkpoint.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as dr from '../../lib';
import { describeWithTorch, runPython } from './python';

const SCRIPT = `
import json, sys
sys.path.insert(0, 'python')
import torch
from dualroute_twin import load_model
from dualroute_twin.decode import DecodeCache, generate_cached
job = json.loads(sys.argv[1])
m = load_model(job['model']).double().eval()
ids = torch.tensor(job['ids'])
with torch.no_grad():
    full = m(ids)
c = DecodeCache(m, ids.shape[0])
err = 0.0
for p in range(ids.shape[1]):
    err = max(err, (c.step(ids[:, p].tolist()) - full[:, p]).abs().max().item())
print(json.dumps({'err': err, 'tokens': generate_cached(load_model(job['model']).eval(), job['prompt'], job['n'])}))
`;

describeWithTorch('PyTorch twin: KV-cache decode', (py) => {
  const configs: Array<[string, dr.DualRouteLMConfig]> = [
    ['sliding window + gated full, GQA', { vocabSize: 37, dModel: 16, nHeads: 4, nKvHeads: 2, nLayers: 2, maxSeq: 40, seed: 3,
      pattern: [{ local: 'window', window: 5, global: 'none' }, { local: 'window', window: 5, global: 'full', fusion: 'gated' }] }],
    ['block window + full (softmax per channel), no RoPE', { vocabSize: 37, dModel: 16, nHeads: 2, nLayers: 2, maxSeq: 40, seed: 4, rope: false,
      layer: { local: 'window', windowMode: 'block', window: 4, global: 'full', fusion: 'softmax', gateUnits: 'channel' } }],
  ];
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dr-twin-decode-'));
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
  configs.forEach(([name, config], i) => {
    test(name, async () => {
      const m = new dr.DualRouteLM(config);
      const ckpt = path.join(dir, `m${i}.safetensors`);
      await dr.saveModel(ckpt, m);
      const ids = [Array.from({ length: 23 }, (_, p) => (p * 11 + 5) % 37), Array.from({ length: 23 }, (_, p) => (p * 7 + 2) % 37)];
      const prompt = [3, 1, 4, 1, 5];
      const out = JSON.parse(runPython(py, ['-c', SCRIPT, JSON.stringify({ model: ckpt, ids, prompt, n: 12 })]));
      expect(out.err).toBeLessThan(1e-12);
      expect(out.tokens).toEqual((await m.generateTokens(prompt, { maxTokens: 12, temperature: 0 }))[0]);
      m.dispose();
    });
  });
});
