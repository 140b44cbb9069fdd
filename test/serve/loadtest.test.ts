// The load test (bench/loadtest.ts), shortened: 8 streaming clients for 4 s against the real
// server in this process, and a 160-token length trace. Checks the report's shape, not speed or
// RSS (other suites share the machine): no errors, requests done, samples every second, the
// window layers' allocated KV bytes constant, and in the trace the window layers' used bytes
// flat once their ring is full while the full-attention layers' rise.
import { runLoadTest, problems, summary, markdown, traceSpec, LoadTestReport } from '../../bench/loadtest';
import { renderSvg } from '../../lib';

let r: LoadTestReport;

beforeAll(async () => {
  r = await runLoadTest({ seconds: 4, clients: 8, maxTokens: 40, traceTokens: 160, seed: 3 });
}, 60_000);

test('the load phase: requests stream to [DONE] without errors; TTFT and tokens counted', () => {
  expect(r.hardStop).toBe(false);
  expect(r.errors).toBe(0);
  expect(r.errorKinds).toEqual({});
  expect(r.requests).toBeGreaterThan(0);
  // max_tokens in [32, 40]; an eos may end a request early, never past max_tokens
  expect(r.tokens).toBeGreaterThan(0);
  expect(r.tokens).toBeLessThanOrEqual(40 * r.requests);
  expect(r.tokensPerSecond).toBeGreaterThan(0);
  expect(r.ttft.n).toBeGreaterThan(0);
  expect(r.ttft.p50).toBeGreaterThan(0);
  expect(r.ttft.p90).toBeGreaterThanOrEqual(r.ttft.p50);
  expect(r.options).toMatchObject({ seconds: 4, clients: 8, minTokens: 32, maxTokens: 40, warmupSeconds: 1 });
});

test('samples every second: memory, sequences, KV bytes; window allocation constant', () => {
  const load = r.samples.filter((s) => s.phase !== 'trace');
  expect(load.length).toBeGreaterThanOrEqual(3);
  for (const s of load) {
    expect(s.rss).toBeGreaterThan(0);
    expect(s.heapUsed).toBeGreaterThan(0);
    expect(s.nativeBytes).toBeGreaterThan(0);
    expect(s.running).toBeLessThanOrEqual(8);
  }
  expect(load.some((s) => s.running > 0 && s.tokensPerSecond > 0)).toBe(true);
  // every slot's ring allocated once: 4 window layers x 32 slots x 4 heads x 95 rows x 16 x (k, v) x 4 bytes
  expect(r.kv.window.allocatedConstant).toBe(true);
  expect(r.kv.window.allocatedWarmup).toBe(4 * 32 * 4 * 95 * 16 * 2 * 4);
  expect(new Set(load.map((s) => s.window.allocated))).toEqual(new Set([r.kv.window.allocatedWarmup]));
  // 2 full layers x 32 slots x 4 heads x maxSeq 1024 rows x 16 x 2 x 4 bytes
  expect(r.kv.full.allocatedEnd).toBe(2 * 32 * 4 * 1024 * 16 * 2 * 4);
  expect(r.rss.warmup).toBeGreaterThan(0);
  expect(r.rss.max).toBeGreaterThanOrEqual(r.rss.end);
});

test('the length trace: window bytes flat after the ring fills, full bytes rising', () => {
  const t = r.trace!;
  expect(t.generated).toBe(160);
  expect(t.ringRows).toBe(32 + 64 - 1);
  expect(t.points.map((p) => p.generated)).toEqual([16, 32, 48, 64, 80, 96, 112, 128, 144]);
  const row = 4 * 16 * 2 * 4;  // bytes of one position in one layer: heads x headDim x (k, v) x 4
  for (const p of t.points) {
    expect(p.positions).toBe(8 + p.generated - 1);
    expect(p.window.used).toBe(4 * Math.min(p.positions, t.ringRows) * row);
    expect(p.full.used).toBe(2 * p.positions * row);
  }
  const after = t.points.filter((p) => p.positions >= t.ringRows);
  expect(after.length).toBeGreaterThan(2);
  expect(new Set(after.map((p) => p.window.used)).size).toBe(1);
  expect(t.windowFlat).toBe(true);
  expect(t.fullRising).toBe(true);
  expect(problems({ ...r, rss: { ...r.rss, flat: true } })).toEqual([]);
});

test('the report: text lines, markdown table, plot spec', async () => {
  const lines = summary(r);
  expect(lines[1]).toMatch(/^ {2}requests \d+, tokens \d+ in [\d.]+ s = \d+ tokens\/s, errors 0$/);
  expect(lines.join('\n')).not.toMatch(/passed/);
  expect(markdown(r, 'node dist/bench/loadtest.js')).toMatch(/\| aggregate tokens\/s \| \d+ \|/);
  const svg = await renderSvg(traceSpec(r));
  expect(svg).toMatch(/^<svg/);
  expect(svg).toContain('generated tokens');
});
