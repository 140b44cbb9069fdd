// `npm run loadtest`: a load test of the OpenAI-compatible server (lib/serve/server.ts). It starts
// the real server in this process on 127.0.0.1 (a free port) with a small untrained DualRouteLM
// (byte vocabulary, 4 layers of window-32 attention, a gated full-attention path every second
// layer, maxSeq 1024, seed 0) and limits {concurrency 32, batch 32, queue 64}, then:
//
// 1. the length trace: one long generation alone (an 8-token prompt, maxSeq - 8 new tokens,
//    temperature 1) through the server's BatchEngine, reading engine.cacheBytes() every 16
//    tokens: the window layers' used KV bytes stay flat once their ring (window + prefillChunk - 1
//    rows per slot) is full, the full-attention layers' grow with the text;
// 2. the load phase: C clients (default 32), each looping POST /v1/completions with stream: true
//    (a short random prompt, max_tokens random in [32, --max-tokens]) and reading the SSE stream to
//    [DONE], for T seconds (default 60); a request in flight at the deadline finishes. Every second:
//    RSS, V8 heap used, the addon's tensor bytes (memory()), sequences running, the KV-cache bytes
//    (window and full, used and allocated) and tokens/s.
//
// The report: requests, tokens (the streams' usage), tokens/s, errors (a status other than 200, a
// stream without [DONE], an exception), TTFT p50/p90 (request sent to first text chunk), RSS at
// the end of the warm-up (min(15 s, 25% of T) into the load) against the end and the maximum:
// "RSS flat" when it grew by less than 10% and less than 64 MiB. --check exits 1 on any error,
// RSS growth past that, window layers' allocated KV bytes changing after the warm-up, or a trace
// whose window bytes are not flat or whose full bytes do not rise. Bounded in time: everything
// is aborted and the server closed T + 20 s after the start (closing waits 5 s at most), and the
// CLI exits at T + 30 s.
//
//   npm run loadtest                                              # 60 s, 32 clients
//   node dist/bench/loadtest.js --seconds 60 --clients 32 --check --json out.json --md out.md --plot DIR
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Command } from 'commander';
import * as dr from '../lib';
import { serve, Server, ServeLimits } from '../lib/serve/server';
import type { Tokenizer } from '../lib/train/tokenizers';

/** The default model: untrained, byte vocabulary, seed 0. */
export const LOADTEST_MODEL: dr.DualRouteLMConfig = {
  vocabSize: 259, dModel: 64, nHeads: 4, nLayers: 4, maxSeq: 1024, seed: 0,
  pattern: [{ local: 'window', window: 32, global: 'none' }, { local: 'window', window: 32, global: 'full', fusion: 'gated' }],
};

export const LOADTEST_LIMITS: ServeLimits = { concurrency: 32, batch: 32, queue: 64 };

export interface LoadTestOptions {
  /** Length of the load phase (default 60). */
  seconds?: number;
  /** Concurrent streaming clients (default 32). */
  clients?: number;
  /** max_tokens of a request is random in [minTokens, maxTokens] (defaults 32, 256). */
  maxTokens?: number;
  minTokens?: number;
  /** New tokens of the length trace (default maxSeq - 8; 0 skips it). */
  traceTokens?: number;
  /** RSS is compared from this point of the load phase on (default min(15, 25% of seconds)). */
  warmupSeconds?: number;
  /** Everything is aborted and the server closed this long after the start (default seconds + 20). */
  hardStopSeconds?: number;
  /** Seed of the prompts, lengths and sampling (default 0). */
  seed?: number;
  /** Another model and tokenizer (default: LOADTEST_MODEL, ByteTokenizer); not disposed. */
  model?: dr.DualRouteLM;
  tokenizer?: Tokenizer;
  limits?: ServeLimits;
  /** Progress lines (default: none). */
  log?: (line: string) => void;
}

export interface KvBytes { used: number; allocated: number }

export interface LoadSample {
  /** Seconds since the start of the load phase (negative during the trace). */
  t: number;
  phase: 'trace' | 'load' | 'drain';
  rss: number;
  heapUsed: number;
  /** The addon's live tensor bytes and the blocks it holds for reuse (memory()). */
  nativeBytes: number;
  nativeCachedBytes: number;
  tensors: number;
  running: number;
  waiting: number;
  window: KvBytes;
  full: KvBytes;
  /** Generated tokens per second over the last interval (the engine's count). */
  tokensPerSecond: number;
}

export interface TracePoint {
  generated: number;
  /** Positions in the sequence's caches (prompt + generated - 1: the last token is not fed yet). */
  positions: number;
  window: KvBytes;
  full: KvBytes;
}

export interface LoadTestReport {
  date: string;
  cpu: string;
  threads: number;
  /** The machine's 1-minute load average at the start and at the end (other processes share the cores). */
  loadavg: [number, number];
  model: { params: number; dModel: number; nLayers: number; maxSeq: number; layers: string[] };
  limits: ServeLimits;
  options: { seconds: number; clients: number; minTokens: number; maxTokens: number; warmupSeconds: number; hardStopSeconds: number; seed: number };
  requests: number;
  /** Completion tokens of the finished requests (their usage). */
  tokens: number;
  /** From the start of the load phase to the last request's end. */
  seconds: number;
  tokensPerSecond: number;
  errors: number;
  errorKinds: Record<string, number>;
  errorExamples: string[];
  /** Milliseconds from sending a request to its first text chunk. */
  ttft: { n: number; p50: number; p90: number; max: number };
  rss: { warmup: number; end: number; max: number; growth: number; growthFraction: number; flat: boolean };
  heapUsed: { warmup: number; end: number; max: number };
  nativeBytes: { warmup: number; end: number; max: number };
  kv: { window: { allocatedWarmup: number; allocatedEnd: number; allocatedConstant: boolean; usedMax: number }; full: { allocatedWarmup: number; allocatedEnd: number; usedMax: number } };
  trace: {
    promptTokens: number; maxTokens: number; generated: number; seconds: number;
    /** Rows of a window layer's ring per slot: its used bytes stop growing at this many positions. */
    ringRows: number;
    windowFlat: boolean; fullRising: boolean;
    points: TracePoint[];
  } | null;
  hardStop: boolean;
  samples: LoadSample[];
}

const MiB = 1 << 20;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

// a small seeded generator (mulberry32)
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const WORDS = ['the', 'local', 'global', 'router', 'window', 'token', 'path', 'attention', 'memory', 'layer', 'gate', 'model',
  'stream', 'cache', 'segment', 'query', 'key', 'value', 'long', 'short', 'text', 'reads', 'writes', 'and', 'of', 'a'];

function randomPrompt(r: () => number): string {
  const n = 2 + Math.floor(r() * 5);
  return Array.from({ length: n }, () => WORDS[Math.floor(r() * WORDS.length)]).join(' ');
}

function percentile(xs: number[], p: number): number {
  if (!xs.length) return NaN;
  const s = xs.slice().sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(p * s.length) - 1))];
}

function positiveInt(name: string, v: unknown, min = 1): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min) throw new dr.ValueError(`loadtest: Expected an integer >= ${min} for ${name} but received ${String(v)}`);
  return v;
}

/** Runs the length trace and the load phase (see the file's head) and returns the report. */
export async function runLoadTest(options: LoadTestOptions = {}): Promise<LoadTestReport> {
  const seconds = options.seconds ?? 60;
  if (typeof seconds !== 'number' || !(seconds > 0) || !Number.isFinite(seconds)) throw new dr.ValueError(`loadtest: Expected seconds > 0 but received ${String(seconds)}`);
  const clients = positiveInt('clients', options.clients ?? 32);
  const maxTokens = positiveInt('maxTokens', options.maxTokens ?? 256);
  const minTokens = Math.min(positiveInt('minTokens', options.minTokens ?? 32), maxTokens);
  const seed = positiveInt('seed', options.seed ?? 0, 0);
  const warmupSeconds = options.warmupSeconds ?? Math.min(15, 0.25 * seconds);
  const hardStopSeconds = options.hardStopSeconds ?? seconds + 20;
  const log = options.log ?? (() => undefined);
  const tokenizer = options.tokenizer ?? new dr.ByteTokenizer();
  const model = options.model ?? new dr.DualRouteLM(LOADTEST_MODEL);
  const limits = options.limits ?? LOADTEST_LIMITS;
  const maxSeq = model.config.maxSeq;
  const traceTokens = options.traceTokens ?? maxSeq - 8;
  positiveInt('traceTokens', traceTokens, 0);

  const start = performance.now();
  const load0 = os.loadavg()[0];
  const hard = new AbortController();
  const hardTimer = setTimeout(() => hard.abort(), hardStopSeconds * 1000);
  let server: Server | null = null;
  let closed = true;
  const samples: LoadSample[] = [];
  let sampler: NodeJS.Timeout | null = null;
  try {
    server = await serve({ model, tokenizer, host: '127.0.0.1', port: 0, limits });
    closed = false;
    const engine = server.engine;
    log(`server at ${server.url}: ${(model.numParameters() / 1e6).toFixed(2)} M parameters, limits ${JSON.stringify(limits)}`);

    // ---- the sampler: every second, whatever the phase
    let phase: LoadSample['phase'] = 'trace';
    let loadStart = NaN;
    let lastTokens = engine.stats.tokens, lastAt = performance.now();
    const sample = (): LoadSample => {
      const now = performance.now();
      const mu = process.memoryUsage();
      const m = dr.memory();
      const kv = engine.cacheBytes();
      const tps = now > lastAt ? ((engine.stats.tokens - lastTokens) * 1000) / (now - lastAt) : 0;
      lastTokens = engine.stats.tokens;
      lastAt = now;
      const s: LoadSample = {
        t: Number.isNaN(loadStart) ? now : (now - loadStart) / 1000,  // trace samples: fixed up when the load starts
        phase, rss: mu.rss, heapUsed: mu.heapUsed, nativeBytes: m.bytes, nativeCachedBytes: m.cpu.cachedBytes, tensors: m.tensors,
        running: engine.runningCount, waiting: engine.waitingCount,
        window: { ...kv.window }, full: { ...kv.full }, tokensPerSecond: tps,
      };
      samples.push(s);
      return s;
    };
    sampler = setInterval(sample, 1000);

    // ---- the length trace: one generation alone, cache bytes every 16 tokens
    let trace: LoadTestReport['trace'] = null;
    if (traceTokens > 0) {
      const prompt = tokenizer.encode('The long').slice(0, 8);
      while (prompt.length < 8) prompt.push(32);
      const want = Math.min(traceTokens, maxSeq - prompt.length);
      const windows = model.config.layers.filter((c) => c.local === 'window').map((c) => c.window);
      const ringRows = windows.length ? Math.max(...windows.map((w) => Math.min(maxSeq, w + engine.prefillChunk - 1))) : 0;
      const points: TracePoint[] = [];
      const t0 = performance.now();
      let generated = 0;
      const record = () => {
        const kv = engine.cacheBytes();
        points.push({ generated, positions: prompt.length + generated - 1, window: { ...kv.window }, full: { ...kv.full } });
      };
      for await (const _ of engine.submit(prompt, { maxTokens: want, temperature: 1, seed, signal: hard.signal })) {
        generated++;
        // every 16 tokens; the last token ends the sequence (its slot is freed as it is chosen) and
        // the first is read after the engine has fed it already (prefill and the first decode step
        // share a turn): neither is recorded
        if (generated % 16 === 0 && generated < want) record();
      }
      const after = points.filter((p) => p.positions >= ringRows);
      const windowFlat = after.length > 1 && after.every((p) => p.window.used === after[0].window.used && p.window.used > 0);
      const fullRising = points.length > 2 && points.every((p, i) => i === 0 || p.full.used > points[i - 1].full.used);
      trace = { promptTokens: prompt.length, maxTokens: want, generated, seconds: (performance.now() - t0) / 1000, ringRows, windowFlat, fullRising, points };
      const last = points[points.length - 1];
      log(`length trace: ${generated} tokens in ${trace.seconds.toFixed(1)} s, ${points.length} points${last ? `; at ${last.generated} tokens window used ${last.window.used} B, full used ${last.full.used} B` : ''}`);
    }

    // ---- the load phase
    phase = 'load';
    loadStart = performance.now();
    for (const s of samples) s.t = (s.t - loadStart) / 1000;  // the trace's samples: negative
    lastTokens = engine.stats.tokens;
    lastAt = loadStart;
    sample();
    const deadline = loadStart + seconds * 1000;
    const ttfts: number[] = [];
    const errorKinds: Record<string, number> = {};
    const errorExamples: string[] = [];
    let requests = 0, tokens = 0, lastEnd = loadStart;
    const error = (kind: string, detail: string) => {
      errorKinds[kind] = (errorKinds[kind] ?? 0) + 1;
      if (errorExamples.length < 5) errorExamples.push(`${kind}: ${detail}`);
    };
    const url = `${server.url}/v1/completions`;
    const client = async (i: number) => {
      const r = rng(seed * 1000003 + i + 1);
      while (performance.now() < deadline && !hard.signal.aborted) {
        const body = {
          model: 'dualroute', prompt: randomPrompt(r), max_tokens: minTokens + Math.floor(r() * (maxTokens - minTokens + 1)),
          temperature: 1, seed: Math.floor(r() * 2 ** 31), stream: true, stream_options: { include_usage: true },
        };
        const t0 = performance.now();
        let ok = false;
        try {
          const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body), signal: hard.signal });
          if (res.status !== 200 || !res.body) {
            error(`status ${res.status}`, (await res.text().catch(() => '')).slice(0, 200));
          } else {
            const reader = res.body.getReader();
            const dec = new TextDecoder();
            let buf = '', done = false, first = -1, usage = -1, bad = '';
            for (;;) {
              const { value, done: end } = await reader.read();
              if (end) break;
              buf += dec.decode(value, { stream: true });
              let at: number;
              while ((at = buf.indexOf('\n\n')) >= 0) {
                const ev = buf.slice(0, at);
                buf = buf.slice(at + 2);
                for (const line of ev.split('\n')) {
                  if (!line.startsWith('data: ')) continue;
                  const data = line.slice(6);
                  if (data === '[DONE]') {
                    done = true;
                    continue;
                  }
                  const obj = JSON.parse(data) as { error?: unknown; usage?: { completion_tokens: number }; choices?: Array<{ text?: string }> };
                  if (obj.error) bad = JSON.stringify(obj.error).slice(0, 200);
                  if (obj.usage) usage = obj.usage.completion_tokens;
                  if (first < 0 && obj.choices?.some((c) => c.text)) first = performance.now();
                }
              }
            }
            if (bad) error('error event', bad);
            else if (!done) error('no [DONE]', `stream of max_tokens ${body.max_tokens} ended without [DONE]`);
            else if (usage < 0) error('no usage', 'stream without the usage chunk');
            else {
              ok = true;
              tokens += usage;
              if (first >= 0) ttfts.push(first - t0);
            }
          }
        } catch (e) {
          error(hard.signal.aborted ? 'aborted at the hard stop' : 'exception', (e as Error)?.message ?? String(e));
        }
        if (ok) requests++;
        lastEnd = Math.max(lastEnd, performance.now());
        if (!ok) await sleep(50);  // a failing server is not hammered in a tight loop
      }
    };
    const progress = setInterval(() => {
      const s = samples[samples.length - 1];
      log(`t ${s.t.toFixed(0)} s: ${requests} requests, ${tokens} tokens, ${s.running} running, ${s.tokensPerSecond.toFixed(0)} tokens/s, RSS ${(s.rss / MiB).toFixed(1)} MiB`);
    }, 10_000);
    const timer = setTimeout(() => {
      phase = 'drain';
    }, seconds * 1000);
    await Promise.all(Array.from({ length: clients }, (_, i) => client(i)));
    clearTimeout(timer);
    clearInterval(progress);
    clearInterval(sampler);
    sampler = null;
    phase = 'drain';
    const endSample = sample();
    const elapsed = (lastEnd - loadStart) / 1000;

    // ---- the figures
    const load = samples.filter((s) => s.phase !== 'trace');
    const warm = load.find((s) => s.t >= warmupSeconds) ?? endSample;
    const after = load.filter((s) => s.t >= warm.t);
    const max = (f: (s: LoadSample) => number) => Math.max(...load.map(f));
    const growth = endSample.rss - warm.rss;
    const report: LoadTestReport = {
      date: new Date().toISOString(),
      cpu: os.cpus()[0]?.model ?? 'unknown CPU',
      threads: dr.numThreads(),
      loadavg: [load0, os.loadavg()[0]],
      model: {
        params: model.numParameters(), dModel: model.config.dModel, nLayers: model.config.layers.length, maxSeq,
        layers: model.config.layers.map((c) => `${c.local}${c.local === 'window' ? ` ${c.window}` : ''} + ${c.global}${c.local !== 'none' && c.global !== 'none' ? ` (${c.fusion})` : ''}`),
      },
      limits,
      options: { seconds, clients, minTokens, maxTokens, warmupSeconds, hardStopSeconds, seed },
      requests, tokens, seconds: elapsed, tokensPerSecond: elapsed > 0 ? tokens / elapsed : 0,
      errors: Object.values(errorKinds).reduce((a, b) => a + b, 0), errorKinds, errorExamples,
      ttft: { n: ttfts.length, p50: percentile(ttfts, 0.5), p90: percentile(ttfts, 0.9), max: ttfts.length ? Math.max(...ttfts) : NaN },
      rss: { warmup: warm.rss, end: endSample.rss, max: max((s) => s.rss), growth, growthFraction: growth / warm.rss, flat: growth < 0.1 * warm.rss && growth < 64 * MiB },
      heapUsed: { warmup: warm.heapUsed, end: endSample.heapUsed, max: max((s) => s.heapUsed) },
      nativeBytes: { warmup: warm.nativeBytes, end: endSample.nativeBytes, max: max((s) => s.nativeBytes) },
      kv: {
        window: { allocatedWarmup: warm.window.allocated, allocatedEnd: endSample.window.allocated, allocatedConstant: after.every((s) => s.window.allocated === warm.window.allocated), usedMax: max((s) => s.window.used) },
        full: { allocatedWarmup: warm.full.allocated, allocatedEnd: endSample.full.allocated, usedMax: max((s) => s.full.used) },
      },
      trace,
      hardStop: hard.signal.aborted,
      samples,
    };
    return report;
  } finally {
    clearTimeout(hardTimer);
    if (sampler) clearInterval(sampler);
    if (server && !closed) {
      // after a hard stop, connections of aborted streams can linger until the client's keep-alive
      // timeout: drop them all; a server that does not close within 5 s is left behind (the CLI
      // exits anyway)
      if (hard.signal.aborted) server.app.server.closeAllConnections();
      let t: NodeJS.Timeout | undefined;
      const ok = await Promise.race([server.close().then(() => true), new Promise<boolean>((r) => (t = setTimeout(() => r(false), 5000)))]);
      clearTimeout(t);
      if (ok && !options.model) model.dispose();
    } else if (!options.model) model.dispose();
  }
}

/** What --check fails on: errors, RSS growth after the warm-up, window allocation changing, the trace's shape. */
export function problems(r: LoadTestReport): string[] {
  const out: string[] = [];
  if (r.hardStop) out.push('the run hit its hard stop');
  if (r.errors > 0) out.push(`${r.errors} errors (${Object.entries(r.errorKinds).map(([k, n]) => `${k}: ${n}`).join(', ')})`);
  if (r.requests === 0) out.push('no request finished');
  if (!r.rss.flat) out.push(`RSS grew by ${(r.rss.growth / MiB).toFixed(1)} MiB (${(100 * r.rss.growthFraction).toFixed(1)}%) after the warm-up (limits: 10% and 64 MiB)`);
  if (!r.kv.window.allocatedConstant) out.push(`the window layers' allocated KV bytes changed after the warm-up (${r.kv.window.allocatedWarmup} -> ${r.kv.window.allocatedEnd})`);
  if (r.trace) {
    if (!r.trace.windowFlat) out.push(`length trace: the window layers' used KV bytes are not flat after ${r.trace.ringRows} positions`);
    if (!r.trace.fullRising) out.push('length trace: the full layers\' used KV bytes do not rise with the length');
  }
  return out;
}

const mib = (b: number) => `${(b / MiB).toFixed(1)} MiB`;
const kib = (b: number) => `${(b / 1024).toFixed(0)} KiB`;

/** The concise text report. */
export function summary(r: LoadTestReport): string[] {
  const t = r.trace;
  const first = t?.points.find((p) => p.positions >= t.ringRows), last = t?.points[t.points.length - 1];
  return [
    `load test: ${r.options.clients} clients for ${r.options.seconds} s, max_tokens ${r.options.minTokens}..${r.options.maxTokens} (DualRouteLM ${(r.model.params / 1e6).toFixed(2)} M parameters, maxSeq ${r.model.maxSeq}; ${r.threads} threads, load average ${r.loadavg[0].toFixed(1)})`,
    `  requests ${r.requests}, tokens ${r.tokens} in ${r.seconds.toFixed(1)} s = ${r.tokensPerSecond.toFixed(0)} tokens/s, errors ${r.errors}${r.errors ? ` (${r.errorExamples.join('; ')})` : ''}`,
    `  TTFT p50 ${r.ttft.p50.toFixed(0)} ms, p90 ${r.ttft.p90.toFixed(0)} ms (max ${r.ttft.max.toFixed(0)} ms, ${r.ttft.n} requests)`,
    `  RSS at warm-up end (${r.options.warmupSeconds} s) ${mib(r.rss.warmup)}, at the end ${mib(r.rss.end)} (${r.rss.growth >= 0 ? '+' : ''}${(100 * r.rss.growthFraction).toFixed(1)}%), max ${mib(r.rss.max)}: ${r.rss.flat ? 'RSS flat' : 'RSS GROWING'}`,
    `  V8 heap used ${mib(r.heapUsed.warmup)} -> ${mib(r.heapUsed.end)} (max ${mib(r.heapUsed.max)}); tensor bytes ${mib(r.nativeBytes.warmup)} -> ${mib(r.nativeBytes.end)} (max ${mib(r.nativeBytes.max)})`,
    `  KV cache allocated: window ${kib(r.kv.window.allocatedWarmup)} -> ${kib(r.kv.window.allocatedEnd)} (${r.kv.window.allocatedConstant ? 'constant' : 'CHANGED'}), full ${kib(r.kv.full.allocatedWarmup)} -> ${kib(r.kv.full.allocatedEnd)}; used at most: window ${kib(r.kv.window.usedMax)}, full ${kib(r.kv.full.usedMax)}`,
    t && first && last
      ? `  length trace (${t.generated} tokens alone, ${t.seconds.toFixed(1)} s): window used ${kib(first.window.used)} from ${first.positions} positions on (${t.windowFlat ? 'flat' : 'NOT flat'}), full used ${kib(t.points[0].full.used)} -> ${kib(last.full.used)} (${t.fullRising ? 'rising' : 'NOT rising'})`
      : '  length trace: skipped',
  ];
}

/** The committed table (bench/results/loadtest.md). */
export function markdown(r: LoadTestReport, command: string): string {
  const t = r.trace;
  const last = t?.points[t.points.length - 1];
  const first = t?.points.find((p) => p.positions >= t.ringRows);
  const rows: Array<[string, string]> = [
    ['clients, seconds', `${r.options.clients}, ${r.options.seconds}`],
    ['max_tokens per request', `random in [${r.options.minTokens}, ${r.options.maxTokens}]`],
    ['requests done', String(r.requests)],
    ['tokens generated', String(r.tokens)],
    ['aggregate tokens/s', r.tokensPerSecond.toFixed(0)],
    ['errors', String(r.errors)],
    ['TTFT p50 / p90 (ms)', `${r.ttft.p50.toFixed(0)} / ${r.ttft.p90.toFixed(0)}`],
    [`RSS at warm-up end (${r.options.warmupSeconds} s) / end / max (MiB)`, `${(r.rss.warmup / MiB).toFixed(1)} / ${(r.rss.end / MiB).toFixed(1)} / ${(r.rss.max / MiB).toFixed(1)}`],
    ['RSS growth after warm-up', `${(r.rss.growth / MiB).toFixed(1)} MiB (${(100 * r.rss.growthFraction).toFixed(1)}%): ${r.rss.flat ? 'RSS flat' : 'growing'}`],
    ['V8 heap used, warm-up / end (MiB)', `${(r.heapUsed.warmup / MiB).toFixed(1)} / ${(r.heapUsed.end / MiB).toFixed(1)}`],
    ['tensor bytes (memory()), warm-up / end (MiB)', `${(r.nativeBytes.warmup / MiB).toFixed(1)} / ${(r.nativeBytes.end / MiB).toFixed(1)}`],
    ['KV allocated, window layers (bytes)', `${r.kv.window.allocatedWarmup} (${r.kv.window.allocatedConstant ? 'constant' : 'changed'})`],
    ['KV allocated, full layers (bytes)', String(r.kv.full.allocatedWarmup)],
    ['KV used at most under load, window / full (bytes)', `${r.kv.window.usedMax} / ${r.kv.full.usedMax}`],
  ];
  if (t && last && first) {
    rows.push([`length trace: ${t.generated} tokens alone (prompt ${t.promptTokens})`, `${t.seconds.toFixed(1)} s`]);
    rows.push([`window used from ${first.positions} positions on (ring ${t.ringRows} rows) (bytes)`, `${first.window.used} (${t.windowFlat ? 'flat' : 'not flat'})`]);
    rows.push(['full used, first / last point (bytes)', `${t.points[0].full.used} -> ${last.full.used} (${t.fullRising ? 'rising' : 'not rising'})`]);
  }
  return [
    `# Load test of the server`,
    '',
    `Measured ${r.date.slice(0, 10)} on ${r.cpu} (${r.threads} threads), CPU; 1-minute load average ${r.loadavg[0].toFixed(1)} at the start, ${r.loadavg[1].toFixed(1)} at the end. Untrained DualRouteLM (${r.model.params} parameters, dModel ${r.model.dModel}, ${r.model.nLayers} layers: ${r.model.layers.join('; ')}; maxSeq ${r.model.maxSeq}), byte tokenizer, server limits ${JSON.stringify(r.limits)}; the clients run in the server's process (POST /v1/completions, stream: true, temperature 1).`,
    '',
    `Command: \`${command}\``,
    '',
    '| figure | value |',
    '| --- | ---: |',
    ...rows.map(([k, v]) => `| ${k} | ${v} |`),
    '',
    'The plot (loadtest.svg, loadtest.png) shows the length trace: KV-cache bytes in use against the generated length, the window layers (local) and the full-attention layers (global).',
    '',
  ].join('\n');
}

/** The length trace's plot: KV-cache bytes used against generated tokens, local and global. */
export function traceSpec(r: LoadTestReport): object {
  const pts = r.trace?.points ?? [];
  const values = pts.flatMap((p) => [
    { generated: p.generated, kib: p.window.used / 1024, path: 'local (window 32, ring)' },
    { generated: p.generated, kib: p.full.used / 1024, path: 'global (full attention)' },
  ]);
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
    title: { text: 'KV-cache bytes of one sequence against its generated length', subtitle: `DualRouteLM, ${r.model.nLayers} layers (window 32 in every layer, full attention in every second), maxSeq ${r.model.maxSeq}` },
    width: 520, height: 300,
    data: { values },
    mark: { type: 'line', strokeWidth: 2 },
    encoding: {
      x: { field: 'generated', type: 'quantitative', title: 'generated tokens' },
      y: { field: 'kib', type: 'quantitative', title: 'KV-cache bytes used (KiB)' },
      color: { field: 'path', type: 'nominal', title: 'path', scale: { range: [dr.LOSS_COLORS.train, dr.LOSS_COLORS.val] }, legend: { orient: 'bottom', labelLimit: 400 } },
    },
  };
}

async function main(): Promise<void> {
  const o = new Command('npm run loadtest')
    .description('load test of the OpenAI-compatible server: concurrent streaming clients, memory over time, KV bytes against length')
    .option('--seconds <n>', 'length of the load phase in seconds', Number, 60)
    .option('--clients <n>', 'concurrent streaming clients', (v) => parseInt(v, 10), 32)
    .option('--max-tokens <n>', 'largest max_tokens of a request (each is random in [32, n])', (v) => parseInt(v, 10), 256)
    .option('--trace-tokens <n>', 'new tokens of the length trace (default maxSeq - 8; 0 skips it)', (v) => parseInt(v, 10))
    .option('--seed <n>', 'seed of the prompts, lengths and sampling', (v) => parseInt(v, 10), 0)
    .option('--json <file>', 'write the report (with the samples and the trace) as JSON')
    .option('--md <file>', 'write a short markdown table of the figures')
    .option('--plot <dir>', 'write the length trace plot as DIR/loadtest.svg and DIR/loadtest.png')
    .option('--check', 'exit 1 on any error, RSS growth after the warm-up, window KV allocation changing, or a trace of the wrong shape')
    .option('--quiet', 'no progress lines')
    .parse()
    .opts<{ seconds: number; clients: number; maxTokens: number; traceTokens?: number; seed: number; json?: string; md?: string; plot?: string; check?: boolean; quiet?: boolean }>();
  // the whole run ends within T + 30 s, whatever hangs
  const bound = setTimeout(() => {
    console.error(`loadtest: still running ${o.seconds + 30} s after the start; exiting`);
    process.exit(1);
  }, (o.seconds + 30) * 1000);
  bound.unref();
  const r = await runLoadTest({ seconds: o.seconds, clients: o.clients, maxTokens: o.maxTokens, traceTokens: o.traceTokens, seed: o.seed, log: o.quiet ? undefined : (l) => console.log(l) });
  const command = ['node dist/bench/loadtest.js', ...process.argv.slice(2)].join(' ');
  for (const l of summary(r)) console.log(l);
  if (o.json) {
    fs.mkdirSync(path.dirname(path.resolve(o.json)), { recursive: true });
    const tmp = `${o.json}.tmp-${process.pid}`;
    fs.writeFileSync(tmp, JSON.stringify({ command, ...r }, null, 1) + '\n');
    fs.renameSync(tmp, o.json);
  }
  if (o.md) {
    fs.mkdirSync(path.dirname(path.resolve(o.md)), { recursive: true });
    fs.writeFileSync(o.md, markdown(r, command));
  }
  if (o.plot && r.trace) {
    const p = await dr.writePlots(o.plot, 'loadtest', traceSpec(r));
    console.log(`  plot: ${p.svg}, ${p.png}`);
  }
  const bad = problems(r);
  if (o.check) console.log(bad.length ? `check: FAILED: ${bad.join('; ')}` : 'check: ok');
  process.exit(o.check && bad.length ? 1 : 0);
}

if (require.main === module) {
  main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
