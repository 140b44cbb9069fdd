// What the compiler made of the row kernels' software prefetches. GCC treats __builtin_prefetch
// as free of side effects: a prefetch helper it did not inline early was judged to do nothing and
// its calls deleted, and SwiGLU forward and backward shipped without one prefetch instruction
// while their sources asked for them (native/cpu/prefetch.h now forces the helpers inline). This
// disassembles the built addon's float32 kernels, per x86 variant, and counts the prefetches.
import { execFileSync } from 'child_process';

const addonPath: string = require('bindings')({ bindings: 'dualroute', path: true });

interface Sym {
  name: string;
  start: number;
  size: number;
}

/** The addon's defined symbols, demangled, with their address and size. */
function symbols(): Sym[] {
  const out = execFileSync('nm', ['-C', '-S', '--defined-only', addonPath], { encoding: 'utf8', maxBuffer: 1 << 28 });
  const syms: Sym[] = [];
  for (const line of out.split('\n')) {
    const m = /^([0-9a-f]+) ([0-9a-f]+) [tTwW] (.*)$/.exec(line);
    if (m) syms.push({ start: parseInt(m[1], 16), size: parseInt(m[2], 16), name: m[3] });
  }
  return syms;
}

/** Prefetch instructions in the code of the symbols whose names contain every part. */
function prefetches(syms: Sym[], parts: string[]): { functions: number; count: number } {
  const chosen = syms.filter((s) => s.size > 0 && parts.every((p) => s.name.includes(p)));
  let count = 0;
  for (const s of chosen) {
    const asm = execFileSync('objdump', ['-d', '--no-show-raw-insn', `--start-address=0x${s.start.toString(16)}`,
      `--stop-address=0x${(s.start + s.size).toString(16)}`, addonPath], { encoding: 'utf8', maxBuffer: 1 << 26 });
    count += (asm.match(/\bprefetch(t0|t1|t2|nta|w)\b/g) ?? []).length;
  }
  return { functions: chosen.length, count };
}

describe('software prefetches survive compilation', () => {
  const syms = symbols();
  // each kernel's own code (its task lambdas included) in each x86 variant
  const kernels: Array<[string, (isa: string) => string[]]> = [
    ['swiglu forward', (isa) => [`cpu::${isa}::swiglu(`, 'operator()<float>']],
    ['swiglu backward', (isa) => [`cpu::${isa}::(anonymous namespace)::swiglu_bw_typed<float>`]],
    ['rmsNorm / layerNorm backward', (isa) => [`cpu::${isa}::(anonymous namespace)::norm_bw_`, '<float>']],
    ['softmax exp pass', (isa) => [`cpu::${isa}::(anonymous namespace)::exp_sum_f32`]],
  ];
  for (const isa of ['avx512', 'avx2'])
    for (const [what, parts] of kernels)
      test(`${isa} ${what}`, () => {
        const { functions, count } = prefetches(syms, parts(isa));
        expect(functions).toBeGreaterThan(0);
        expect(count).toBeGreaterThan(0);
      });
});
