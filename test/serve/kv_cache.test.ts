import * as dr from '../../lib';
import { expectClose } from '../helpers';

describe('RingKVCache', () => {
  test('decoding token by token through a fixed-size ring equals causal local attention', () => {
    dr.tidy(() => {
      const B = 2, Hq = 4, Hkv = 2, S = 45, D = 16, W = 8;
      const g = new dr.Generator(3);
      const q = dr.randn([B, Hq, S, D], { generator: g });
      const k = dr.randn([B, Hkv, S, D], { generator: g });
      const v = dr.randn([B, Hkv, S, D], { generator: g });
      const pos = dr.arange(S);
      const qr = dr.rope(q, pos), kr = dr.rope(k, pos);
      const want = dr.localAttention(qr, kr, v, { window: W, causal: true });
      const cache = new dr.RingKVCache({ batch: B, heads: Hkv, headDim: D, window: W });
      // a prefill of 5 positions, then one token at a time
      cache.append(kr.narrow(2, 0, 5), v.narrow(2, 0, 5));
      dr.synchronize(); // outputs of queued ops take memory when they run
      const bytes = dr.memory().cpu.bytes;
      for (let t = 5; t < S; ++t) {
        dr.tidy(() => {
          cache.append(kr.narrow(2, t, 1), v.narrow(2, t, 1));
          const got = cache.attend(qr.narrow(2, t, 1));
          expectClose(got, want.narrow(2, t, 1).contiguous().dataSync());
        });
        expect(dr.memory().cpu.bytes).toBe(bytes); // the cache never grows
      }
      expect(cache.length).toBe(S);
      expect(cache.k.shape).toEqual([B, Hkv, W, D]);
      cache.dispose();
    });
  });

  test('an append longer than the window keeps the last window positions', () => {
    dr.tidy(() => {
      const cache = new dr.RingKVCache({ batch: 1, heads: 1, headDim: 2, window: 3 });
      const k = dr.arange(0, 14, 1, { dtype: 'float32' }).reshape([1, 1, 7, 2]);
      cache.append(k, k);
      // positions 4, 5, 6 in slots 1, 2, 0
      expect(cache.k.arraySync()).toEqual([[[[12, 13], [8, 9], [10, 11]]]]);
      expect(() => cache.attend(dr.zeros([1, 1, 2, 2]))).toThrow(/one query per sequence/);
      cache.dispose();
    });
  });
});
