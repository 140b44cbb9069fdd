// saveModel / loadModel: the same logits after a round trip for both models; bad files are typed
// errors; a failed save leaves the previous file intact.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as dr from '../../lib';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dr-models-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const ids = (B: number, S: number) => dr.tensor(Int32Array.from({ length: B * S }, (_, i) => (i * 7 + 3) % 13), [B, S]);

describe('saveModel / loadModel', () => {
  test('DualRouteLM round trip (config and weights)', async () => {
    const m = new dr.DualRouteLM({ vocabSize: 13, dModel: 8, nHeads: 2, nLayers: 2, maxSeq: 8, pattern: [{ local: 'conv', global: 'none' }, { global: 'routed', capacity: 0.5 }], seed: 7 });
    m.eval();
    const file = path.join(dir, 'lm.safetensors');
    await dr.saveModel(file, m);
    const back = await dr.loadModel(file);
    expect(back).toBeInstanceOf(dr.DualRouteLM);
    back.eval();
    const x = ids(2, 6);
    expect(Array.from((back as dr.DualRouteLM).forward(x).dataSync())).toEqual(Array.from(m.forward(x).dataSync()));
    expect((back as dr.DualRouteLM).source).toEqual(m.source);
    [m, back, x].forEach((t) => t.dispose());
  });

  test('DualRouteSeq2Seq round trip', async () => {
    const m = new dr.DualRouteSeq2Seq({ vocabSize: 13, dModel: 8, nHeads: 2, encoderLayers: 1, decoderLayers: 1, maxSource: 8, maxTarget: 8, keep: 0.5, seed: 2 });
    const file = path.join(dir, 's2s.safetensors');
    await dr.saveModel(file, m);
    const back = (await dr.loadModel(file)) as dr.DualRouteSeq2Seq;
    const s = ids(1, 5), t = ids(1, 4);
    expect(Array.from(back.forward(s, t).dataSync())).toEqual(Array.from(m.forward(s, t).dataSync()));
    [m, back, s, t].forEach((x) => x.dispose());
  });

  test('bad files and arguments are typed errors', async () => {
    const junk = path.join(dir, 'junk.safetensors');
    fs.writeFileSync(junk, Buffer.from('not a checkpoint at all'));
    await expect(dr.loadModel(junk)).rejects.toThrow(dr.FormatError);
    await expect(dr.loadModel(path.join(dir, 'missing.safetensors'))).rejects.toThrow(dr.FormatError);
    await expect(dr.loadModel(path.join(dir, 'missing.safetensors'))).rejects.toThrow(/no such file/);
    const plain = path.join(dir, 'plain.safetensors');
    const lin = new dr.nn.Linear(2, 2);
    await dr.saveCheckpoint(plain, { model: lin });
    await expect(dr.loadModel(plain)).rejects.toThrow(/written by saveModel/);
    await expect(dr.saveModel(plain, lin as never)).rejects.toThrow(dr.ValueError);
    lin.dispose();
  });
});
