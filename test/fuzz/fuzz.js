#!/usr/bin/env node
// Fuzzes every export of dualroute and every Tensor method with hostile arguments, in child
// processes, and counts what happened to each call:
//   ok       returned (results are disposed)
//   typed    threw one of the library's typed errors (DualrouteError subclasses)
//   untyped  threw anything else (a TypeError, a plain Error, a string): a fault
//   abort    the child process died during the call (a signal, V8 fatal error): a fault
//   hang     the call ran past --call-timeout seconds: a fault
//
//   node test/fuzz/fuzz.js [--seconds 60] [--seed 1] [--children 2] [--call-timeout 20]
//                          [--json out.json] [--verbose] [--canary]
//
// --canary replaces the targets with three that misbehave on purpose (a TypeError, an abort, a
// hang), to show that each kind of fault is caught and counted.
//
// The parent splits a deterministic sequence of calls among children; a child reports each call
// before making it, so a crash or a hang is pinned to the call, and the parent starts a new
// child after it. Children run in a temporary folder (saves write there) with their address
// space capped (--memory-gb, default 6), so an allocation the machine cannot hold is a
// MemoryError, not the kernel's OOM killer, and at nice 10, so that a fuzz run beside other
// tests (npm test runs it in parallel with timing-sensitive ones) takes only idle CPU time. Exit status: 0 when there is no fault.
// The last line is the count of each outcome.
'use strict';
const { spawn } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');

const DIST = path.resolve(__dirname, '..', '..', 'dist', 'lib');

// ---- the child ------------------------------------------------------------------------------------

// A small deterministic PRNG (mulberry32).
function prng(seed) {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// Methods that are internal (marked @internal) or whose job is to run user callbacks forever.
const SKIP_METHODS = new Set(['constructor', 'setGradFn', 'takeData', 'checkLive', 'readInto', 'checkArraySize']);
const SKIP_EXPORTS = new Set(['toTypedError', 'describe']);

function child(seed, from, to, canary) {
  const dr = require(DIST);
  const rnd = prng(seed);
  const pick = (a) => a[Math.floor(rnd() * a.length)];
  const out = (line) => fs.writeSync(1, line + '\n');
  const live = [];
  const keep = (t) => {
    live.push(t);
    return t;
  };
  // tensors of every dtype and awkward shapes, a view, a disposed one
  const tensors = () => {
    const ts = [
      dr.zeros([2, 3]), dr.ones([3]), dr.scalar(1.5), dr.zeros([0]), dr.zeros([1, 1, 1]),
      dr.tensor(new Int32Array([0, 1, 2]), [3]), dr.tensor([true, false]), dr.zeros([2, 2], { dtype: 'bfloat16' }),
      dr.zeros([2, 2], { dtype: 'float64' }), dr.randn([2, 3, 4, 8]), dr.ones([4]).expand([3, 4]), dr.arange(0, 6).reshape([2, 3]).T,
      dr.tensor([NaN, Infinity, -Infinity]), dr.ones([2]).requiresGrad_(), dr.zeros([2, 0]), dr.zeros([0, 4]),
      dr.zeros([1, 2, 0, 8]),
    ];
    const gone = dr.zeros([2]);
    gone.dispose();
    ts.push(gone);
    return ts.map(keep);
  };
  const T = tensors();
  const numbers = [0, 1, -1, 2, 3, 1.5, -0, NaN, Infinity, -Infinity, 2 ** 31, -(2 ** 31) - 1, 2 ** 53, 2 ** 62, 1e-300, -1e300, 7, 64];
  const others = [undefined, null, true, false, '', 'x', 'float32', 'cuda', 'cpu', 'int32', 'bfloat16', 'sum', 'tanh',
    {}, [], [[]], [1, 'a'], [2, 3], [-1], [0], [2 ** 40], [1.5], [NaN], { dtype: 'x' }, { device: 'gpu' }, { generator: {} },
    { window: 2 }, { window: -1, mode: 'x' }, { causal: 'yes' }, { keepDims: 1 }, { reduction: 'x' }, { alpha: NaN },
    () => 1, () => { throw new Error('user fn'); }, () => dr.zeros([1]), Symbol('s'), 10n, new Float32Array(3),
    new Uint8Array(0), { a: 1 }, Object.create(null), [dr.zeros([1]), 'x'], { weight: 0, bias: NaN }, { step: -1, lr: -1, slots: {} }];
  const value = () => {
    const u = rnd();
    if (u < 0.35) return pick(T);
    if (u < 0.6) return pick(numbers);
    if (u < 0.7) return [pick(T), pick(T)];
    return pick(others);
  };
  // the targets: every exported function and class (constructed and called), nn/optim members,
  // every Tensor method
  const targets = [];
  const add = (name, fn) => targets.push({ name, fn });
  for (const [k, v] of Object.entries(dr)) {
    if (SKIP_EXPORTS.has(k)) continue;
    if (typeof v === 'function') {
      if (/^[A-Z]/.test(k)) add(`new ${k}`, (...a) => new v(...a));
      else add(k, v);
    }
  }
  for (const ns of ['nn', 'optim']) {
    for (const [k, v] of Object.entries(dr[ns])) {
      if (typeof v !== 'function') continue;
      if (/^[A-Z]/.test(k)) add(`new ${ns}.${k}`, (...a) => new v(...a));
      else add(`${ns}.${k}`, v);
    }
  }
  const proto = Object.getPrototypeOf(T[0]);
  for (const k of Object.getOwnPropertyNames(proto)) {
    if (SKIP_METHODS.has(k)) continue;
    const d = Object.getOwnPropertyDescriptor(proto, k);
    if (typeof d.value === 'function') add(`Tensor.${k}`, (self, ...a) => d.value.apply(self, a));
    else if (d.get) add(`Tensor.${k} (get)`, (self) => d.get.call(self));
  }
  // module methods on a real module, with hostile arguments
  const lin = new dr.nn.Linear(3, 2);
  for (const k of ['forward', 'loadStateDict', 'to', 'namedParameters', 'stateDict', 'train', 'zeroGrad']) {
    add(`Linear.${k}`, (...a) => lin[k](...a));
  }
  const opt = new dr.optim.AdamW(lin.parameters(), { lr: 0.1 });
  for (const k of ['step', 'loadStateDict', 'zeroGrad', 'stateDict']) add(`AdamW.${k}`, (...a) => opt[k](...a));
  if (canary) {
    targets.length = 0;
    add('canary.untyped', () => null.x);
    add('canary.abort', () => process.abort());
    add('canary.hang', () => { for (;;); });
  }
  out(`targets ${targets.length}`);

  const isTyped = (e) => e instanceof dr.DualrouteError;
  const describeValue = (v) => {
    if (v instanceof dr.Tensor) return v.isDisposed ? 'Tensor(disposed)' : `Tensor(${v.dtype}[${v.shape}])`;
    if (typeof v === 'function') return 'fn';
    if (typeof v === 'symbol') return 'symbol';
    if (typeof v === 'bigint') return `${v}n`;
    try {
      const s = JSON.stringify(v, (_, x) => (x instanceof dr.Tensor ? 'T' : typeof x === 'number' && !Number.isFinite(x) ? String(x) : x));
      return s === undefined ? String(v) : s.slice(0, 60);
    } catch {
      return typeof v;
    }
  };

  (async () => {
    for (let call = 0; call < to; ++call) {
      const target = targets[Math.floor(rnd() * targets.length)];
      const nargs = Math.floor(rnd() * 4);
      const args = Array.from({ length: nargs }, value);
      if (target.name.startsWith('Tensor.')) args.unshift(pick(T));
      if (call < from) continue; // the same sequence in every child: skip to our slice
      out(`call ${call} ${target.name}(${args.map(describeValue).join(', ')})`);
      let outcome = 'ok';
      let detail = '';
      try {
        let r = target.fn(...args);
        if (r && typeof r.then === 'function') r = await r;
        dr.dispose(r);
      } catch (e) {
        // the user callback's own error passes through unchanged, as it should
        outcome = isTyped(e) || (e instanceof Error && e.message === 'user fn') ? 'typed' : 'untyped';
        if (outcome === 'untyped') detail = `${e && e.constructor ? e.constructor.name : typeof e}: ${String(e && e.message !== undefined ? e.message : e).slice(0, 200)}`;
      }
      out(`done ${call} ${outcome}${detail ? ' ' + detail.replace(/\n/g, ' ') : ''}`);
      // keep the pool usable: the fuzz must not poison later calls through shared state
      for (const t of T) if (t.isDisposed && t !== T[T.length - 1]) T[T.indexOf(t)] = keep(dr.zeros([2, 3]));
      if (!dr.isGradEnabled()) dr.enableGrad(() => undefined);
    }
    out('end');
    process.exit(0);
  })();
}

// ---- the parent ---------------------------------------------------------------------------------

function parseArgs(argv) {
  const o = { seconds: 60, seed: 1, children: 2, callTimeout: 20, json: null, verbose: false, memoryGb: 6, slice: 400 };
  for (let i = 0; i < argv.length; ++i) {
    const a = argv[i];
    const val = () => argv[++i];
    if (a === '--seconds') o.seconds = Number(val());
    else if (a === '--seed') o.seed = Number(val());
    else if (a === '--children') o.children = Number(val());
    else if (a === '--call-timeout') o.callTimeout = Number(val());
    else if (a === '--memory-gb') o.memoryGb = Number(val());
    else if (a === '--json') o.json = val();
    else if (a === '--verbose') o.verbose = true;
    else if (a === '--canary') o.canary = true;
    else if (a === '--child') o.child = [Number(val()), Number(val()), Number(val())];
    else throw new Error(`unknown argument ${a}`);
  }
  return o;
}

function runSlice(o, from, to, cwd) {
  return new Promise((resolve) => {
    // the address-space cap turns an impossible allocation into a MemoryError
    const cmd = `ulimit -v ${Math.round(o.memoryGb * 1024 * 1024)} && exec nice -n 10 "${process.execPath}" "${__filename}" --child ${o.seed} ${from} ${to}${o.canary ? ' --canary' : ''}`;
    const p = spawn('bash', ['-c', cmd], { cwd, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, DUALROUTE_NUM_THREADS: '1' } });
    const res = { calls: [], crash: null, targets: 0 };
    let buf = '';
    let current = null;
    let timer = null;
    // a call gets callTimeout seconds; loading the library before the first call gets more (a
    // loaded machine can take seconds to start node and the addon: that is no hang of a call)
    const arm = (seconds = o.callTimeout) => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        res.crash = { kind: 'hang', call: current };
        p.kill('SIGKILL');
      }, seconds * 1000);
    };
    arm(Math.max(o.callTimeout, 60));
    let stderr = '';
    p.stderr.on('data', (d) => (stderr = (stderr + d).slice(-2000)));
    p.stdout.on('data', (d) => {
      buf += d;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line.startsWith('targets ')) {
          res.targets = Number(line.slice(8));
          arm();
        } else if (line.startsWith('call ')) {
          current = line.slice(5);
          arm();
        } else if (line.startsWith('done ')) {
          const m = /^done (\d+) (\w+)(?: (.*))?$/.exec(line);
          res.calls.push({ call: Number(m[1]), outcome: m[2], detail: m[3] || '', what: current });
          current = null;
        }
      }
    });
    p.on('exit', (code, signal) => {
      clearTimeout(timer);
      if (!res.crash && current !== null) res.crash = { kind: 'abort', call: current, why: signal || `exit ${code}`, stderr: stderr.slice(-400) };
      resolve(res);
    });
  });
}

async function parent(o) {
  const cwd = fs.mkdtempSync(path.join(os.tmpdir(), 'dr-fuzz-'));
  const counts = { ok: 0, typed: 0, untyped: 0, abort: 0, hang: 0 };
  let targets = 0;
  const faults = [];
  const deadline = Date.now() + o.seconds * 1000;
  let next = 0;
  const worker = async () => {
    while (Date.now() < deadline) {
      const from = next;
      const to = from + o.slice;
      next = to;
      let at = from;
      while (at < to && Date.now() < deadline) {
        const r = await runSlice(o, at, to, cwd);
        targets = Math.max(targets, r.targets);
        for (const c of r.calls) {
          counts[c.outcome] += 1;
          if (c.outcome === 'untyped') faults.push({ kind: 'untyped', what: c.what, detail: c.detail });
        }
        const last = r.calls.length ? r.calls[r.calls.length - 1].call : at - 1;
        if (r.crash) {
          counts[r.crash.kind] += 1;
          faults.push({ kind: r.crash.kind, what: r.crash.call, detail: r.crash.why ? `${r.crash.why} ${r.crash.stderr || ''}` : '' });
          const m = /^(\d+)/.exec(r.crash.call || '');
          at = m ? Number(m[1]) + 1 : last + 2;
        } else {
          at = to;
        }
      }
    }
  };
  await Promise.all(Array.from({ length: o.children }, worker));
  fs.rmSync(cwd, { recursive: true, force: true });
  const byWhat = new Map();
  for (const f of faults) {
    const key = `${f.kind} ${f.what ? f.what.replace(/^\d+ /, '').replace(/\(.*$/, '') : '?'}: ${f.detail.replace(/\d+/g, 'N').slice(0, 120)}`;
    byWhat.set(key, (byWhat.get(key) || 0) + 1);
  }
  for (const [k, n] of [...byWhat.entries()].sort((a, b) => b[1] - a[1]).slice(0, o.verbose ? 200 : 40)) console.log(`  ${n}x ${k}`);
  if (o.verbose) for (const f of faults.slice(0, 50)) console.log(`  ${f.kind}: ${f.what} -> ${f.detail}`);
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  if (o.json) fs.writeFileSync(o.json, JSON.stringify({ seconds: o.seconds, seed: o.seed, targets, total, counts, faults: faults.slice(0, 500) }, null, 2));
  console.log(`fuzz: ${targets} targets, ${total} calls: ${counts.ok} returned, ${counts.typed} typed errors, ${counts.untyped} untyped errors, ${counts.abort} aborts, ${counts.hang} hangs`);
  process.exit(counts.untyped + counts.abort + counts.hang === 0 ? 0 : 1);
}

const opts = parseArgs(process.argv.slice(2));
if (opts.child) child(...opts.child, !!opts.canary);
else parent(opts);
