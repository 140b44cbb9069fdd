// Instruction counts of the benchmark rows under valgrind's callgrind, and the comparison of a
// run's counts with a baseline file. Wall times on a shared 2-core machine move by 10-50% from
// run to run; the number of instructions a kernel executes on fixed inputs does not, so CI flags
// regressions by counts and prints times beside them for information.
//
// How a row is counted: bench/run.js starts itself under
//   valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*OpTask<*>::run()'
//            --zero-before='*::PendingOps(...)' --dump-before='*::Memory(...)'
// with DUALROUTE_NUM_THREADS=1 (the pool runs every region inline on the calling thread) and
// DUALROUTE_CPU_ISA=avx2 (valgrind emulates up to AVX2, so an AVX-512 host runs the same code).
// Only instructions inside an op's task body (OpTask<Args>::run: the kernel, its output allocation,
// its scratch) are collected: not node, V8, the JavaScript of the op wrappers or the argument
// checks. For each row the child makes the row's counted inputs, runs it `warmup` times, calls
// dr.pendingOps() (callgrind zeroes its counters on entering PendingOps), runs it `calls` times,
// synchronizes and calls dr.memory() (callgrind writes a dump on entering Memory). Dump k is
// row k; its `totals:` line divided by `calls` is the row's instructions per call.
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as dr from '../lib';
import type { Bench } from './run';

/** What a counts pass measured, as stored in the JSON (`counts`). */
export interface CountsInfo {
  tool: string;
  /** ISA the kernels ran (valgrind's virtual CPU). */
  isa: string;
  threads: number;
  warmup: number;
  calls: number;
  seconds: number;
}

export interface RowCount {
  key: string;
  countShape: string;
  instructions: number;
}

export interface CountOptions {
  warmup: number;
  calls: number;
  /** Arguments that select the same rows in the child (--quick, --filter, --seed). */
  childArgs: string[];
  /** The bench script to start under valgrind (bench/run.js). */
  script: string;
  timeoutS: number;
  /** Keep callgrind's files (cg.out.N: row N's dump, for callgrind_annotate) in this folder. */
  keepDir?: string | null;
}

export function rowKey(r: { op: string; shape: string; dtype: string }): string {
  return `${r.op} | ${r.shape} | ${r.dtype}`;
}

/** The bench a row is counted with: its `counted` variant, else itself. */
export function countedOf(b: Bench): Bench {
  return b.counted ?? b;
}

/** valgrind's version string, or null when it is not installed. */
export function valgrindVersion(): string | null {
  const r = spawnSync('valgrind', ['--version'], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : null;
}

// Function names callgrind matches (demangled; '*' is a wildcard). PendingOps and Memory are the
// addon's entries of dr.pendingOps() and dr.memory(), which nothing in an op's path calls.
const TOGGLE = '*OpTask<*>::run()';
const ZERO = '*::PendingOps(Napi::CallbackInfo const&)';
const DUMP = '*::Memory(Napi::CallbackInfo const&)';

/**
 * Runs the child pass under callgrind and returns the instructions per call of each row, in
 * the order of `list`. Throws with valgrind's log when the pass fails.
 */
export function countInstructions(list: Bench[], o: CountOptions): { rows: RowCount[]; info: CountsInfo } {
  const version = valgrindVersion();
  if (!version) throw new Error('valgrind is not installed (Debian: apt-get install valgrind); --counts and --compare need it');
  let dir: string;
  if (o.keepDir) {
    fs.mkdirSync(o.keepDir, { recursive: true });
    dir = fs.mkdtempSync(path.join(path.resolve(o.keepDir), 'callgrind-'));
  } else {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dr-callgrind-'));
  }
  const t0 = Date.now();
  try {
    const keysFile = path.join(dir, 'rows.json');
    const vgArgs = [
      '--tool=callgrind', '--collect-atstart=no', `--toggle-collect=${TOGGLE}`, `--zero-before=${ZERO}`, `--dump-before=${DUMP}`,
      `--callgrind-out-file=${path.join(dir, 'cg.out')}`, `--log-file=${path.join(dir, 'valgrind.log')}`,
      // no JIT: less for valgrind to translate; the counted code is native either way
      process.execPath, '--jitless', '--no-expose-wasm', o.script, '--callgrind-child', keysFile,
      '--warmup', String(o.warmup), '--calls', String(o.calls), ...o.childArgs,
    ];
    const env = { ...process.env, DUALROUTE_NUM_THREADS: '1', DUALROUTE_CPU_ISA: 'avx2', DUALROUTE_DEVICE: 'cpu' };
    const r = spawnSync('valgrind', vgArgs, { env, stdio: ['ignore', 'inherit', 'inherit'], timeout: o.timeoutS * 1000 });
    const vlog = (): string => {
      try {
        return fs.readFileSync(path.join(dir, 'valgrind.log'), 'utf8').split('\n').slice(-40).join('\n');
      } catch {
        return '(no valgrind log)';
      }
    };
    if (r.error || r.status !== 0) {
      const why = r.error ? r.error.message : r.signal ? `signal ${r.signal}` : `exit status ${r.status}`;
      throw new Error(`the callgrind pass failed (${why}); valgrind's log ends:\n${vlog()}`);
    }
    const child = JSON.parse(fs.readFileSync(keysFile, 'utf8')) as { keys: string[]; countShapes: string[]; isa: string; threads: number };
    // dumps are cg.out.1, cg.out.2, ... in order; cg.out itself is the (empty) dump at exit
    const dumps = fs.readdirSync(dir).map((f) => /^cg\.out\.(\d+)$/.exec(f)).filter((m): m is RegExpExecArray => m !== null)
      .map((m) => ({ n: Number(m[1]), file: path.join(dir, m[0]) })).sort((a, b) => a.n - b.n);
    const totals: number[] = [];
    for (const d of dumps) {
      const text = fs.readFileSync(d.file, 'utf8');
      if (!/^desc: Trigger: --dump-before=.*::Memory\(/m.test(text)) continue;
      const m = /^totals:\s*(\d+)/m.exec(text);
      if (!m) throw new Error(`${d.file}: no totals line`);
      totals.push(Number(m[1]));
    }
    if (totals.length !== child.keys.length || child.keys.length !== list.length) {
      throw new Error(`the callgrind pass wrote ${totals.length} dumps for ${child.keys.length} rows (expected ${list.length}); valgrind's log ends:\n${vlog()}`);
    }
    const rows = list.map((b, i) => {
      if (child.keys[i] !== rowKey(b)) throw new Error(`the callgrind child ran ${child.keys[i]} where ${rowKey(b)} was expected`);
      return { key: rowKey(b), countShape: child.countShapes[i], instructions: Math.round(totals[i] / o.calls) };
    });
    const info: CountsInfo = { tool: version.replace(/^valgrind-/, 'callgrind '), isa: child.isa, threads: child.threads, warmup: o.warmup, calls: o.calls, seconds: (Date.now() - t0) / 1000 };
    return { rows, info };
  } finally {
    if (o.keepDir) console.log(`callgrind's files kept in ${dir} (cg.out.N is row N: callgrind_annotate --inclusive=yes ${path.join(dir, 'cg.out.1')})`);
    else fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** The child side: runs each row's counted bench between the two markers callgrind watches. */
export function countChild(list: Bench[], keysFile: string, warmup: number, calls: number, seed: number): void {
  const t0 = Date.now();
  const keys: string[] = [];
  const countShapes: string[] = [];
  for (const [i, b] of list.entries()) {
    const c = countedOf(b);
    const t = Date.now();
    const gen = new dr.Generator(seed + i);
    const xs = c.make('cpu', c.dtype, gen);
    try {
      for (let w = 0; w < warmup; ++w) c.run(xs).dispose();
      dr.synchronize();
      dr.pendingOps();  // callgrind: zero
      for (let k = 0; k < calls; ++k) c.run(xs).dispose();
      dr.synchronize();
      dr.memory();  // callgrind: dump
    } finally {
      dr.dispose(xs);
    }
    keys.push(rowKey(b));
    countShapes.push(c.shape);
    console.log(`  counted ${b.op} ${b.shape} ${b.dtype} at ${c.shape} (${((Date.now() - t) / 1000).toFixed(1)} s under callgrind)`);
  }
  const info = dr.devices().cpu;
  fs.writeFileSync(keysFile, JSON.stringify({ keys, countShapes, isa: info.simd, threads: dr.numThreads() }));
  console.log(`  callgrind child: ${list.length} rows in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
}

// ---- comparison with a baseline --------------------------------------------------------------------

export interface CompareRow {
  op: string;
  shape: string;
  dtype: string;
  count_shape?: string;
  baseline?: number;
  instructions?: number;
  change_pct?: number;
  ms?: number;
  baseline_ms?: number;
  status: 'ok' | 'REGRESSION' | 'improved' | 'new' | 'missing' | 'shape changed';
}

export interface CompareResult {
  baseline: string;
  threshold_pct: number;
  regressions: number;
  /** Why the files cannot be compared (a different ISA or thread count), or null. */
  incomparable: string | null;
  rows: CompareRow[];
}

interface CountedRow {
  op: string;
  shape: string;
  dtype: string;
  device: string;
  ms: number;
  instructions?: number;
  count_shape?: string;
}

interface CountedDoc {
  rows: CountedRow[];
  counts?: CountsInfo | null;
}

/**
 * Compares the counts of `now` with those of the baseline document: a row whose count rose by
 * more than thresholdPct percent is a regression; one that fell by more is 'improved' (time to
 * refresh the baseline). Rows are matched on op, shape and dtype; a row counted at another shape
 * than the baseline's is 'shape changed' (not compared). Times are carried along for the report.
 */
export function compareCounts(now: CountedDoc, base: CountedDoc, baselineName: string, thresholdPct: number, filtered: boolean): CompareResult {
  const out: CompareResult = { baseline: baselineName, threshold_pct: thresholdPct, regressions: 0, incomparable: null, rows: [] };
  if (!base.counts) {
    out.incomparable = `${baselineName} has no instruction counts (make it with --counts)`;
  } else if (now.counts && (base.counts.isa !== now.counts.isa || base.counts.threads !== now.counts.threads)) {
    out.incomparable = `${baselineName} was counted on ${base.counts.isa} with ${base.counts.threads} thread(s), this run on ${now.counts.isa} with ${now.counts.threads}`;
  }
  const baseRows = new Map(base.rows.map((r) => [rowKey(r), r]));
  const seen = new Set<string>();
  for (const r of now.rows) {
    const k = rowKey(r);
    const b = baseRows.get(k);
    seen.add(k);
    const row: CompareRow = { op: r.op, shape: r.shape, dtype: r.dtype, count_shape: r.count_shape, instructions: r.instructions, ms: r.ms, status: 'new' };
    if (b) {
      row.baseline = b.instructions;
      row.baseline_ms = b.ms;
      if (b.instructions !== undefined && r.instructions !== undefined && !out.incomparable) {
        if ((b.count_shape ?? b.shape) !== (r.count_shape ?? r.shape)) {
          row.status = 'shape changed';
        } else {
          row.change_pct = (100 * (r.instructions - b.instructions)) / b.instructions;
          row.status = row.change_pct > thresholdPct ? 'REGRESSION' : row.change_pct < -thresholdPct ? 'improved' : 'ok';
          if (row.status === 'REGRESSION') out.regressions++;
        }
      }
    }
    out.rows.push(row);
  }
  if (!filtered) {
    for (const b of base.rows) {
      if (!seen.has(rowKey(b))) out.rows.push({ op: b.op, shape: b.shape, dtype: b.dtype, count_shape: b.count_shape, baseline: b.instructions, baseline_ms: b.ms, status: 'missing' });
    }
  }
  // a baseline that matches no row (another size set, a renamed op) must not pass as "no regressions"
  if (!out.incomparable && !out.rows.some((r) => r.change_pct !== undefined)) out.incomparable = `no row of this run has a count in ${baselineName} (another --quick setting or --filter?)`;
  return out;
}

/** The command that makes the committed CI baseline (bench/README.md). */
export const BASELINE_COMMAND = 'node dist/bench/run.js --quick --counts --json bench/baseline-cpu.json';

function pad(s: string, n: number, right = false): string {
  if (s.length >= n) return s;
  return right ? ' '.repeat(n - s.length) + s : s + ' '.repeat(n - s.length);
}

const ir = (v: number | undefined): string => (v === undefined ? '-' : v.toLocaleString('en-US'));
const ms = (v: number | undefined): string => (v === undefined ? '-' : v >= 100 ? v.toFixed(0) : v.toPrecision(3));

/** The comparison as text lines (a table and one verdict line). */
export function compareLines(c: CompareResult, info: CountsInfo | null | undefined): string[] {
  const lines: string[] = [];
  lines.push(`instructions per call (${info ? `${info.tool}, ${info.threads} thread, ${info.isa}, ${info.calls} call(s) after ${info.warmup} warm-up` : 'callgrind'}) against ${c.baseline}; regression above +${c.threshold_pct}%; times for information only`);
  const header = [pad('op', 14), pad('shape', 22), pad('dtype', 9), pad('counted at', 20), pad('baseline Ir', 14, true), pad('Ir', 14, true),
    pad('change', 8, true), pad('ms', 8, true), pad('base ms', 8, true), '  status'].join(' ');
  lines.push(header);
  lines.push('-'.repeat(header.length + 8));
  for (const r of c.rows) {
    lines.push([pad(r.op, 14), pad(r.shape, 22), pad(r.dtype, 9), pad(r.count_shape ?? r.shape, 20), pad(ir(r.baseline), 14, true), pad(ir(r.instructions), 14, true),
      pad(r.change_pct === undefined ? '-' : `${r.change_pct >= 0 ? '+' : ''}${r.change_pct.toFixed(2)}%`, 8, true), pad(ms(r.ms), 8, true), pad(ms(r.baseline_ms), 8, true)].join(' ') + `  ${r.status}`);
  }
  const compared = c.rows.filter((r) => r.change_pct !== undefined).length;
  const stale = c.rows.filter((r) => r.status !== 'ok' && r.status !== 'REGRESSION').map((r) => `${r.op} ${r.shape}: ${r.status}`);
  if (stale.length) lines.push(`baseline out of date for ${stale.join('; ')} (regenerate it: ${BASELINE_COMMAND})`);
  if (c.incomparable) lines.push(`compare: not comparable: ${c.incomparable}`);
  else lines.push(`compare: ${c.regressions} regression(s) among ${compared} compared rows (threshold +${c.threshold_pct}%)`);
  return lines;
}
