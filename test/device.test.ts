import * as dr from '../lib';

describe('devices', () => {
  test('devices() reports the CPU and why CUDA is (not) available', () => {
    const d = dr.devices();
    expect(d.cpu.threads).toBeGreaterThanOrEqual(1);
    expect(['avx512', 'avx2', 'generic']).toContain(d.cpu.simd);
    expect(typeof d.cuda.available).toBe('boolean');
    if (!d.cuda.available) {
      expect(d.cuda.reason).toBeTruthy();
      expect(d.default).toBe('cpu');
    }
    expect(d.cuda.build).toBeTruthy();
  });

  test('forcing cuda where it is absent is a clear DeviceError; the CPU keeps working', () => {
    if (dr.cudaAvailable()) return;
    expect(() => dr.zeros([2], { device: 'cuda' })).toThrow(dr.DeviceError);
    expect(() => dr.zeros([2], { device: 'cuda' })).toThrow(/device 'cuda' is not available/);
    expect(() => dr.ones([2]).to('cuda')).toThrow(dr.DeviceError);
    expect(() => dr.setDefaultDevice('cuda')).toThrow(dr.DeviceError);
    expect(dr.ones([2]).sum().item()).toBe(2);
  });

  test('DUALROUTE_DEVICE=cuda without a GPU fails at import with a DeviceError', () => {
    if (dr.cudaAvailable()) return;
    const { spawnSync } = require('child_process');
    const r = spawnSync(process.execPath, ['-e', "const dr=require('./dist/lib'); try { dr.zeros([1]); } catch (e) { console.log(e.name + ': ' + e.message); process.exit(3); }"], {
      env: { ...process.env, DUALROUTE_DEVICE: 'cuda' },
      cwd: require('path').resolve(__dirname, '..'),
      encoding: 'utf8',
    });
    expect(r.status).toBe(3);
    expect(r.stdout).toMatch(/DeviceError: DUALROUTE_DEVICE=cuda but CUDA is not available/);
  });

  test('thread count: setNumThreads changes it and results do not change', () => {
    const n = dr.numThreads();
    const a = dr.randn([300, 200], { generator: new dr.Generator(2) });
    const ref = a.matmul(a.T).sum(1).dataSync();
    dr.setNumThreads(1);
    expect(dr.numThreads()).toBe(1);
    const one = a.matmul(a.T).sum(1).dataSync();
    dr.setNumThreads(n);
    expect(one).toEqual(ref);
    expect(() => dr.setNumThreads(0)).toThrow(/Expected an integer in 1..1024/);
    a.dispose();
  });

  test('a worker_thread loads its own addon instance', async () => {
    const { Worker } = require('worker_threads');
    const path = require('path');
    const w = new Worker(`const dr = require(${JSON.stringify(path.resolve(__dirname, '../dist/lib'))});
      const { parentPort } = require('worker_threads');
      const x = dr.ones([3]).add(1);
      parentPort.postMessage(Array.from(x.dataSync()));`, { eval: true });
    const msg = await new Promise((res, rej) => { w.on('message', res); w.on('error', rej); });
    expect(msg).toEqual([2, 2, 2]);
    await w.terminate();
  });
});
