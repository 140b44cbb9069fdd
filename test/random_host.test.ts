// Generator.uniform(): the host's Philox draw equals rand([1], {generator}) on the device, for
// seeds past 2^32 and across the counter's lanes, and advances the stream alike.
import * as dr from '../lib';
import { philoxU32 } from '../lib/random';

describe('Generator.uniform', () => {
  test.each([0, 1, 7, 123456789, 2 ** 32 - 1, 2 ** 32 + 5, 2 ** 45 + 12345])('seed %d: equals rand([1]) draw for draw', (seed) => {
    const a = new dr.Generator(seed), b = new dr.Generator(seed);
    for (let i = 0; i < 40; ++i) {
      const u = a.uniform();
      expect(u).toBe(dr.tidy(() => dr.rand([1], { generator: b }).dataSync()[0]));
      expect(u).toBeGreaterThanOrEqual(0);
      expect(u).toBeLessThan(1);
      expect(a.offset).toBe(b.offset);
    }
  });

  test('philoxU32 lanes: four numbers per counter, as a rand of four reads them', () => {
    const g = new dr.Generator(99);
    const four = dr.tidy(() => Array.from(dr.rand([4], { generator: g }).dataSync()));
    expect([0, 1, 2, 3].map((i) => (philoxU32(99, i) >>> 8) / 16777216)).toEqual(four);
  });
});
