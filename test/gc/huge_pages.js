// Run by test/memory.test.ts in a fresh process (DUALROUTE_CPU_HUGEPAGES is read once, at the
// first allocation): large tensors of sizes that are not whole 2 MiB pages, written by an op and
// read back, and the process's AnonHugePages (from /proc/self/smaps_rollup) before and after.
const fs = require('fs');
const path = require('path');
const dr = require(path.join(__dirname, '..', '..', 'dist', 'lib'));

const anonHuge = () => {
  try {
    const m = /AnonHugePages:\s+(\d+) kB/.exec(fs.readFileSync('/proc/self/smaps_rollup', 'utf8'));
    return m ? Number(m[1]) : -1;
  } catch {
    return -1;
  }
};
const before = anonHuge();
const checks = [];
const held = [];
// arange(n) * k, read back: a few elements checked, both tensors held
const make = (n, k) => {
  const x = dr.arange(0, n, 1, { dtype: 'float32' });
  const y = dr.mul(x, k);
  const v = y.dataSync();
  let bad = 0;
  for (const i of [0, 1, n >> 1, n - 2, n - 1]) if (v[i] !== i * k) ++bad;
  checks.push({ n, bad, length: v.length });
  held.push(x, y);
};
// 5 MiB + 4 bytes, 64 MiB - 4 bytes, 9 MiB + 64 bytes: whole pages plus a tail, and one that is not
for (const n of [1310721, 16777215, 2359312]) {
  dr.emptyCache();
  make(n, 0.5);
}
const during = anonHuge();
// blocks under 2 MiB: 1.7 MiB (a 1.75 MiB size class, rounded up to one whole 2 MiB page), 4
// pairs of them held at once
for (let k = 0; k < 4; ++k) make(445645, 0.25);
const afterSmall = anonHuge();
for (const t of held) t.dispose();
console.log(JSON.stringify({ before, during, afterSmall, checks }));
