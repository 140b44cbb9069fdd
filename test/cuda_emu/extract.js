#!/usr/bin/env node
// Extracts the device code of the tensor-core attention kernels from the real sources into
// includes the emulator tests compile, so they always run the code as it is in the repository.
//
//   node test/cuda_emu/extract.js [--fwd-src FILE] [--bwd-src FILE] [--out DIR]
//
// --fwd-src replaces native/cuda/attention.cu, --bwd-src native/cuda/attention_bwd.cu (a mutated
// copy, say); headers always come from the repository. Output (default build/cuda_emu/gen):
// attn_fwd_kernel.inc, attn_bwd_kernel.inc. A file is rewritten only when its text changes.
//
// Per source: the lines between "// emu:begin <tag>" and "// emu:end <tag>" (inside the file's
// anonymous namespace), wrapped in the same namespaces, with a #line directive so that compiler
// messages and the emulator's reports name the real file and line. One-line substitutions:
//   extern __shared__ ... unsigned char NAME[];   ->  unsigned char* NAME = ::emu::dyn_smem();
//   __shared__ TYPE NAME[N];                      ->  TYPE* NAME = ::emu::static_smem<TYPE>(N);
// The file's <system> includes are kept; "device.cuh" and "mma.cuh" are replaced by emu.h; any
// other quoted include is an error. The host code the tests mirror (launch geometry, parameter
// set-up) is checked for the exact statements they assume. Anything missing: exit 1.
'use strict';
const fs = require('fs');
const path = require('path');

const ROOT = path.resolve(__dirname, '..', '..');
const CUDA = path.join(ROOT, 'native', 'cuda');

class ExtractError extends Error {}
const norm = (s) => s.replace(/\s+/g, ' ').trim();

// Host statements whose values the tests reproduce (whitespace-insensitive). If one changes, the
// test's launch code must be revisited.
const HOST_FWD = [
  'P.tiles = (P.n + kBM - 1) / kBM;',
  'const int64_t blocks = BH * P.tiles;',
  'constexpr int smem = mma_smem_bytes<D>();',
  'attn_fwd_mma<D, DUAL><<<static_cast<unsigned>(blocks), kMmaThreads, smem, stream()>>>(P);',
  'P.G = static_cast<int>(a.Hq / a.Hkv);',
  'P.n = static_cast<int>(a.query_index ? a.n : a.Sq);',
  'P.window = a.mask == static_cast<int32_t>(AttnMask::Global) ? 1 : std::min<long long>(a.window, 1LL << 40);',
  'P.scale2 = static_cast<float>(a->scale * kLog2e);',
  'P.scale2 = static_cast<float>(a.scale * kLog2e);',
  'const int64_t BH = a->B * a->Hq;',
  'P.out = out_local;',
  'P.lse = static_cast<float*>(lse_local);',
  'P.out_mix = out;',
  'P.out_g = out_global;',
  'P.lse_g = static_cast<float*>(lse_global);',
  'P.gates_per_head = d->gates_per_head ? 1 : 0;',
  'P.global_rows = d->global_rows;',
  'P.scale = static_cast<float>(a->scale);', // backward parameters are filled here too
];
const HOST_BWD = [
  'P.KT = kBN;',
  'P.tiles = (P.Sk + kBN - 1) / kBN;',
  'const int64_t blocks = BKV * P.tiles;',
  'const long long rows = static_cast<long long>(BKV) * P.G * P.n;',
  'constexpr int rows_per_block = (kDotThreads / 32) * (32 / (D / 8));',
  'const long long dot_blocks = (rows + rows_per_block - 1) / rows_per_block;',
  'constexpr int smem = bwd_smem_bytes<D>();',
  'attn_bwd_dot<D><<<static_cast<unsigned>(dot_blocks), kDotThreads, 0, stream()>>>(',
  'attn_bwd_mma<D><<<static_cast<unsigned>(blocks), kBwdThreads, smem, stream()>>>(P, dr);',
];

const KERNELS = [
  {
    tag: 'fwd',
    def: path.join(CUDA, 'attention.cu'),
    out: 'attn_fwd_kernel.inc',
    host: HOST_FWD,
    needs: [/template <int D, bool DUAL>\s*__global__ void __launch_bounds__\(kMmaThreads\) attn_fwd_mma\(FwdParams P\)/, /struct FwdParams \{/],
    shared: { dynamic: 1, static: 1 },
  },
  {
    tag: 'bwd',
    def: path.join(CUDA, 'attention_bwd.cu'),
    out: 'attn_bwd_kernel.inc',
    host: HOST_BWD,
    needs: [/__global__ void __launch_bounds__\(kBwdThreads\) attn_bwd_mma\(BwdParams P, const float\* __restrict__ Dr\)/,
      /__global__ void __launch_bounds__\(kDotThreads\) attn_bwd_dot\(/],
    shared: { dynamic: 1, static: 1 },
  },
];

function extractOne(k, src) {
  const file = path.resolve(src);
  let text;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new ExtractError(`${k.tag}: cannot read ${file}: ${e.message}`);
  }
  const lines = text.split('\n');
  const find = (marker) => {
    const at = [];
    lines.forEach((l, i) => {
      if (l.trim().startsWith(marker) && (l.trim() === marker || /\s/.test(l.trim()[marker.length]))) at.push(i);
    });
    if (at.length !== 1) throw new ExtractError(`${file}: expected one "${marker}" line, found ${at.length}`);
    return at[0];
  };
  const b = find(`// emu:begin ${k.tag}`);
  const e = find(`// emu:end ${k.tag}`);
  if (e <= b) throw new ExtractError(`${file}: "emu:end ${k.tag}" comes before "emu:begin ${k.tag}"`);

  // The region must sit directly in dualroute::cuda's anonymous namespace.
  const opens = lines.slice(0, b).filter((l) => /^\s*namespace\b[^;]*\{/.test(l)).map((l) => l.trim());
  if (norm(opens.join(' ')) !== 'namespace dualroute { namespace cuda { namespace {')
    throw new ExtractError(`${file}: "emu:begin ${k.tag}" is not inside dualroute::cuda's anonymous namespace (opened: ${opens.join(' | ')})`);

  // Includes of the whole file.
  const sys = [];
  for (const l of lines) {
    const m = /^\s*#\s*include\s*([<"])([^>"]+)[>"]/.exec(l);
    if (!m) continue;
    if (m[1] === '<') sys.push(`#include <${m[2]}>`);
    else if (!['../core/attention.h', 'attention.cuh', 'device.cuh', 'mma.cuh'].includes(m[2]))
      throw new ExtractError(`${file}: include "${m[2]}" is not known to the emulator (extend emu.h / extract.js)`);
  }

  let region = lines.slice(b + 1, e);
  let dyn = 0;
  let stat = 0;
  region = region.map((l) => {
    let m = /^(\s*)extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?unsigned\s+char\s+(\w+)\s*\[\s*\]\s*;(.*)$/.exec(l);
    if (m) {
      ++dyn;
      return `${m[1]}unsigned char* ${m[2]} = ::emu::dyn_smem();${m[3]}`;
    }
    m = /^(\s*)__shared__\s+(?:__align__\(\d+\)\s+)?([\w:]+(?:\s+[\w:]+)*?)\s+(\w+)\s*\[([^\]]+)\]\s*;(.*)$/.exec(l);
    if (m) {
      ++stat;
      return `${m[1]}${m[2]}* ${m[3]} = ::emu::static_smem<${m[2]}>(${m[4]});${m[5]}`;
    }
    return l;
  });
  const body = region.join('\n');
  if (dyn !== k.shared.dynamic || stat !== k.shared.static)
    throw new ExtractError(`${file}: expected ${k.shared.dynamic} extern __shared__ and ${k.shared.static} static __shared__ declarations in the region, found ${dyn} and ${stat} (update extract.js)`);
  const left = body.replace(/__syncthreads\w*/g, '');
  if (/__shared__/.test(left)) throw new ExtractError(`${file}: a __shared__ declaration extract.js cannot rewrite is left in the region`);
  if (/\basm\b/.test(left)) throw new ExtractError(`${file}: inline asm in the region (the emulator needs a C++ equivalent in emu.h)`);
  for (const re of k.needs)
    if (!re.test(body)) throw new ExtractError(`${file}: the region lacks ${re} (renamed? update the tests)`);

  const flat = norm(text);
  return { file, text, flat, begin: b + 2, end: e, sys, body };
}

function checkHost(k, all) {
  for (const stmt of k.host) {
    const want = norm(stmt);
    if (!all.some((g) => g.flat.includes(want)))
      throw new ExtractError(`${k.tag}: host statement not found in ${all.map((g) => path.basename(g.file)).join(' / ')}: "${stmt}" (the test mirrors it; update both)`);
  }
}

function render(k, g) {
  const inc = (p) => `#include "${p}"`;
  return [
    `// Generated by test/cuda_emu/extract.js from ${g.file} lines ${g.begin}-${g.end}; do not edit.`,
    ...g.sys,
    '#include "emu.h"',
    inc(path.join(ROOT, 'native', 'core', 'attention.h')),
    inc(path.join(CUDA, 'attention.cuh')),
    'namespace dualroute {',
    'namespace cuda {',
    'namespace {',
    `#line ${g.begin} "${g.file}"`,
    g.body,
    '}  // namespace',
    '}  // namespace cuda',
    '}  // namespace dualroute',
    '',
  ].join('\n');
}

// Returns { fwd: path, bwd: path }; throws ExtractError.
function extract(opts = {}) {
  const outDir = path.resolve(opts.outDir || path.join(ROOT, 'build', 'cuda_emu', 'gen'));
  const srcs = { fwd: opts.fwdSrc || KERNELS[0].def, bwd: opts.bwdSrc || KERNELS[1].def };
  const got = KERNELS.map((k) => extractOne(k, srcs[k.tag]));
  for (const k of KERNELS) checkHost(k, got);
  fs.mkdirSync(outDir, { recursive: true });
  const res = {};
  KERNELS.forEach((k, i) => {
    const out = path.join(outDir, k.out);
    const text = render(k, got[i]);
    let old = null;
    try {
      old = fs.readFileSync(out, 'utf8');
    } catch {
      /* first run */
    }
    if (old !== text) fs.writeFileSync(out, text);
    res[k.tag] = out;
  });
  return res;
}

module.exports = { extract, ExtractError, ROOT };

if (require.main === module) {
  const args = process.argv.slice(2);
  const opts = {};
  for (let i = 0; i < args.length; ++i) {
    const a = args[i];
    const val = () => {
      if (i + 1 >= args.length) {
        console.error(`extract.js: ${a} needs a value`);
        process.exit(2);
      }
      return args[++i];
    };
    if (a === '--fwd-src') opts.fwdSrc = val();
    else if (a === '--bwd-src') opts.bwdSrc = val();
    else if (a === '--out') opts.outDir = val();
    else {
      console.error(`extract.js: unknown argument ${a}\nusage: node test/cuda_emu/extract.js [--fwd-src FILE] [--bwd-src FILE] [--out DIR]`);
      process.exit(2);
    }
  }
  try {
    const r = extract(opts);
    console.log(`extract.js: wrote ${r.fwd} and ${r.bwd}`);
  } catch (e) {
    if (!(e instanceof ExtractError)) throw e;
    console.error(`extract.js: ${e.message}`);
    process.exit(1);
  }
}
