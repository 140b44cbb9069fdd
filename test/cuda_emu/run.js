#!/usr/bin/env node
// Builds and runs the CUDA emulator tests of the attention kernels (no GPU needed).
//
//   node test/cuda_emu/run.js [--quick] [--jobs N] [--filter TEXT] [--verbose]
//                             [--fwd-src FILE] [--bwd-src FILE] [--sort-src FILE] [--build-dir DIR] [--timeout S]
//
// Extracts the kernels from the sources (extract.js), compiles the test binaries (TESTS below)
// with g++ (or $CXX) into build/cuda_emu/ (again only when an input or the flags changed), and
// runs every case as its own process, N at a time (default: the available cores), longest
// first. --quick runs each (kernel, shape, head dim) under one scheduling mode instead of three.
// Prints one line per failed case, then `cuda-emu: N cases, M failed` (a test binary that fails
// to build counts as one failed case). Exit 0: all passed; 1: a failure; 3: no compiler.
// --fwd-src (mma and SIMT kernels) / --bwd-src / --sort-src / --routing-src / --route-rules-src /
// --elementwise-src / --backward-src (and the other --*-src) test another copy of attention.cu /
// attention_bwd.cu / sort.cu / routing.cu / route_rules.cu / elementwise.cu / backward.cu (a
// mutant, say); give such runs their own --build-dir.
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const crypto = require('crypto');
const { spawn, spawnSync } = require('child_process');
const { extract, ExtractError, ROOT } = require('./extract.js');

const HERE = __dirname;
// Test binaries: source, extra flags, generated kernel include. The backward is built twice: its
// dq update differs for __CUDA_ARCH__ >= 900 (float2 atomicAdd on H100).
const TESTS = [
  { name: 'attn_fwd_test', src: 'attn_fwd_test.cpp', flags: [], inc: ['attn_fwd_kernel.inc'] },
  { name: 'attn_bwd_test', src: 'attn_bwd_test.cpp', flags: [], inc: ['attn_bwd_kernel.inc'] },
  { name: 'attn_bwd_test_sm90', src: 'attn_bwd_test.cpp', flags: ['-D__CUDA_ARCH__=900'], inc: ['attn_bwd_kernel.inc'] },
  { name: 'attn_simt_test', src: 'attn_simt_test.cpp', flags: ['-Wno-maybe-uninitialized'], inc: ['attn_fwd_kernel.inc', 'attn_simt_kernel.inc'] },
  { name: 'sort_test', src: 'sort_test.cpp', flags: [], inc: ['sort_kernel.inc'] },
  { name: 'routing_test', src: 'routing_test.cpp', flags: [], inc: ['routing_kernel.inc'] },
  { name: 'segment_test', src: 'segment_test.cpp', flags: [], inc: ['segment_kernel.inc'] },
  { name: 'kvcache_test', src: 'kvcache_test.cpp', flags: [], inc: ['kvcache_kernel.inc'] },
  { name: 'route_rules_test', src: 'route_rules_test.cpp', flags: [], inc: ['route_rules_kernel.inc'], deps: [path.join(ROOT, 'native', 'core', 'philox.h')] },
  { name: 'moe_test', src: 'moe_test.cpp', flags: [], inc: ['moe_kernel.inc'] },
  { name: 'norm_test', src: 'norm_test.cpp', flags: [], inc: ['norm_kernel.inc'] },
  { name: 'fused_test', src: 'fused_test.cpp', flags: [], inc: ['fused_kernel.inc'] },
  { name: 'rnn_test', src: 'rnn_test.cpp', flags: [], inc: ['rnn_kernel.inc'] },
  { name: 'binary_test', src: 'binary_test.cpp', flags: [], inc: ['ewconv_kernel.inc', 'ewbinary_kernel.inc'] },
  { name: 'unary_test', src: 'unary_test.cpp', flags: [], inc: ['ewconv_kernel.inc', 'ewmap_kernel.inc', 'ewunary_kernel.inc', 'ewswiglu_kernel.inc', 'bwunary_kernel.inc', 'bwswiglu_kernel.inc'],
    deps: [path.join(ROOT, 'native', 'core', 'view.h'), path.join(ROOT, 'native', 'generated', 'enums.h')] },
  { name: 'binmap_test', src: 'binmap_test.cpp', flags: [], inc: ['ewconv_kernel.inc', 'ewmap_kernel.inc', 'ewbinary_kernel.inc', 'ewmap2_kernel.inc', 'ewcompare_kernel.inc', 'ewconvert_kernel.inc', 'ewwhere_kernel.inc'],
    deps: [path.join(ROOT, 'native', 'core', 'view.h'), path.join(ROOT, 'native', 'generated', 'enums.h')] },
  { name: 'activations_test', src: 'activations_test.cpp', flags: [], inc: null, deps: [path.join(ROOT, 'native', 'cuda', 'activations.cuh')] },
  { name: 'emu_selftest', src: 'emu_selftest.cpp', flags: [], inc: null },
];

function parseArgs(argv) {
  const o = { quick: false, jobs: 0, filter: '', verbose: false, timeout: 120, buildDir: path.join(ROOT, 'build', 'cuda_emu') };
  for (let i = 0; i < argv.length; ++i) {
    const a = argv[i];
    const val = () => {
      if (i + 1 >= argv.length) usage(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--quick') o.quick = true;
    else if (a === '--verbose' || a === '-v') o.verbose = true;
    else if (a === '--jobs' || a === '-j') o.jobs = Number(val());
    else if (a === '--filter') o.filter = val();
    else if (a === '--timeout') o.timeout = Number(val());
    else if (a === '--fwd-src') o.fwdSrc = path.resolve(val());
    else if (a === '--bwd-src') o.bwdSrc = path.resolve(val());
    else if (a === '--sort-src') o.sortSrc = path.resolve(val());
    else if (a === '--routing-src') o.routingSrc = path.resolve(val());
    else if (a === '--segment-src') o.segmentSrc = path.resolve(val());
    else if (a === '--kvcache-src') o.kvcacheSrc = path.resolve(val());
    else if (a === '--route-rules-src') o.routeRulesSrc = path.resolve(val());
    else if (a === '--moe-src') o.moeSrc = path.resolve(val());
    else if (a === '--norm-src') o.normSrc = path.resolve(val());
    else if (a === '--fused-src') o.fusedSrc = path.resolve(val());
    else if (a === '--elementwise-src') o.elementwiseSrc = path.resolve(val());
    else if (a === '--backward-src') o.backwardSrc = path.resolve(val());
    else if (a === '--rnn-src') o.rnnSrc = path.resolve(val());
    else if (a === '--build-dir') o.buildDir = path.resolve(val());
    else usage(`unknown argument ${a}`);
  }
  if (!o.jobs) o.jobs = typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
  return o;
}

function usage(msg) {
  console.error(`run.js: ${msg}\nusage: node test/cuda_emu/run.js [--quick] [--jobs N] [--filter TEXT] [--verbose] ` +
    '[--fwd-src FILE] [--bwd-src FILE] [--sort-src FILE] [--routing-src FILE] [--segment-src FILE] [--kvcache-src FILE] [--route-rules-src FILE] [--moe-src FILE] [--norm-src FILE] [--fused-src FILE] [--elementwise-src FILE] [--backward-src FILE] [--rnn-src FILE] [--build-dir DIR] [--timeout S]');
  process.exit(2);
}

function finish(cases, failed) {
  console.log(`cuda-emu: ${cases} cases, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}

function run(cmd, args) {
  return new Promise((resolve) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (out += d));
    p.on('error', (e) => resolve({ code: -1, out: String(e) }));
    p.on('close', (code, signal) => resolve({ code, signal, out }));
  });
}

// Compiles test t unless its stamp (hash of compiler, flags and every input) is current.
async function build(cxx, cxxVersion, t, gen, dir, verbose) {
  const bin = path.join(dir, t.name);
  const flags = ['-std=c++20', '-O2', '-fno-strict-aliasing', '-Wall', '-Wno-unknown-pragmas', ...t.flags,
    `-I${HERE}`, `-I${path.join(HERE, 'include')}`, `-I${gen}`];
  const srcs = [path.join(HERE, 'emu.cpp'), path.join(HERE, t.src)];
  const inputs = [...srcs, path.join(HERE, 'emu.h'), path.join(HERE, 'harness.h'), path.join(HERE, 'reference.h'),
    path.join(HERE, 'map_host.h')];
  if (t.inc)
    inputs.push(path.join(HERE, 'include', 'cuda_runtime.h'), ...t.inc.map((f) => path.join(gen, f)),
      path.join(ROOT, 'native', 'core', 'attention.h'), path.join(ROOT, 'native', 'cuda', 'attention.cuh'),
      // included by path from the generated files, so not in their text
      path.join(ROOT, 'native', 'cuda', 'attention_generic.cuh'), path.join(ROOT, 'native', 'cuda', 'activations.cuh'));
  if (t.deps) inputs.push(...t.deps);
  const h = crypto.createHash('sha256');
  h.update(`${cxx}\n${cxxVersion}\n${flags.join(' ')}\n`);
  for (const f of inputs) h.update(`${f}\n`).update(fs.readFileSync(f));
  const stamp = `${bin}.stamp`;
  const want = h.digest('hex');
  if (fs.existsSync(bin) && fs.existsSync(stamp) && fs.readFileSync(stamp, 'utf8') === want) return { ok: true, bin, built: false };
  try { fs.unlinkSync(stamp); } catch { /* none */ }
  const r = await run(cxx, [...flags, ...srcs, '-o', bin]);
  if (r.code !== 0) return { ok: false, bin, out: r.out };
  if (verbose && r.out.trim()) console.log(r.out.trim());
  fs.writeFileSync(stamp, want);
  return { ok: true, bin, built: true };
}

function listCases(bin) {
  const r = spawnSync(bin, ['--list'], { encoding: 'utf8' });
  if (r.status !== 0) return null;
  return r.stdout.trim().split('\n').filter(Boolean).map((l) => {
    const [i, quick, cost, name] = l.split('\t');
    return { bin, index: Number(i), quick: quick === '1', cost: Number(cost), name };
  });
}

function summary(r) {
  const lines = (s) => s.split('\n').map((x) => x.trim()).filter(Boolean);
  const out = lines(r.stdout);
  const err = lines(r.stderr);
  let msg = r.timedOut ? 'timed out' : err.find((l) => l.startsWith('emu:')) || out[0] || err[err.length - 1] || '';
  if (!msg) msg = r.signal ? `killed by ${r.signal}` : `exit code ${r.code}`;
  return msg.length > 400 ? `${msg.slice(0, 400)}...` : msg;
}

function runCase(c, timeoutS) {
  return new Promise((resolve) => {
    const p = spawn(c.bin, ['--run', String(c.index)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      p.kill('SIGKILL');
    }, timeoutS * 1000);
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => (stderr += d));
    p.on('error', (e) => (stderr += `\n${e.message}`));
    p.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, timedOut });
    });
  });
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const t0 = Date.now();
  const cxx = process.env.CXX || 'g++';
  const v = spawnSync(cxx, ['--version'], { encoding: 'utf8' });
  if (v.error || v.status !== 0) {
    console.log(`cuda-emu: cannot run the C++ compiler "${cxx}" (${v.error ? v.error.code || v.error.message : `exit ${v.status}`}); ` +
      'the emulator tests need g++ with C++20 (set CXX to use another)');
    process.exit(3);
  }
  const gen = path.join(o.buildDir, 'gen');
  let extracted = true;
  try {
    extract({ fwdSrc: o.fwdSrc, bwdSrc: o.bwdSrc, sortSrc: o.sortSrc, routingSrc: o.routingSrc, segmentSrc: o.segmentSrc, kvcacheSrc: o.kvcacheSrc, routeRulesSrc: o.routeRulesSrc, moeSrc: o.moeSrc, normSrc: o.normSrc, fusedSrc: o.fusedSrc, elementwiseSrc: o.elementwiseSrc, backwardSrc: o.backwardSrc, rnnSrc: o.rnnSrc, outDir: gen });
  } catch (e) {
    if (!(e instanceof ExtractError)) throw e;
    console.log(`FAIL extract.js: ${e.message}`);
    extracted = false;
  }
  fs.mkdirSync(o.buildDir, { recursive: true });
  const cxxVersion = v.stdout.split('\n')[0];
  const builds = await Promise.all(TESTS.map((t) =>
    (t.inc && !extracted ? { ok: false, bin: t.name, out: 'no kernel source (extract.js failed)' } : build(cxx, cxxVersion, t, gen, o.buildDir, o.verbose))));
  const tBuild = Date.now();
  let cases = [];
  let failed = 0;
  let count = 0;
  builds.forEach((b, i) => {
    if (!b.ok) {
      ++count;
      ++failed;
      const tail = b.out.trim().split('\n').slice(-40).join('\n');
      console.log(`FAIL build ${TESTS[i].name}:\n${tail}`);
      return;
    }
    const l = listCases(b.bin);
    if (!l) {
      ++count;
      ++failed;
      console.log(`FAIL ${TESTS[i].name} --list`);
      return;
    }
    cases.push(...l);
  });
  cases = cases.filter((c) => (!o.quick || c.quick) && c.name.includes(o.filter));
  cases.sort((a, b) => b.cost - a.cost);
  count += cases.length;
  let next = 0;
  const worker = async () => {
    while (next < cases.length) {
      const c = cases[next++];
      const s = Date.now();
      const r = await runCase(c, o.timeout);
      const ok = !r.timedOut && r.code === 0;
      if (!ok) {
        ++failed;
        console.log(`FAIL ${c.name}: ${summary(r)}`);
      } else if (o.verbose) {
        console.log(`ok   ${c.name} (${((Date.now() - s) / 1000).toFixed(2)} s)`);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, o.jobs) }, worker));
  if (o.verbose) {
    const built = builds.filter((b) => b.built).map((b) => path.basename(b.bin));
    console.log(`cuda-emu: build ${((tBuild - t0) / 1000).toFixed(1)} s${built.length ? ` (compiled ${built.join(', ')})` : ' (up to date)'}, ` +
      `run ${((Date.now() - tBuild) / 1000).toFixed(1)} s on ${o.jobs} jobs`);
  }
  finish(count, failed);
}

main().catch((e) => {
  console.log(`cuda-emu: ${e.stack || e}`);
  finish(1, 1);
});
