// The GC safety net's scenarios, run by test/memory.test.ts in a fresh `node --expose-gc`
// process: the library loaded once, as a user's program has it. (Inside jest's in-band run
// every test file loads its own copy of the library, each with its own FinalizationRegistry;
// when a dead copy's registry drops off V8's dirty list while a cleanup task is queued, V8's
// task returns early without clearing its "posted" flag and no FinalizationRegistry in the
// process is cleaned up again. That is an artefact of the test runner, not of a program.)
// Prints one JSON line: each scenario's tensor / byte counts before and after.
'use strict';
const path = require('path');

const dr = require(path.resolve(__dirname, '..', '..', 'dist', 'lib'));
const gc = globalThis.gc;
if (!gc) {
  process.stderr.write('run with node --expose-gc\n');
  process.exit(2);
}
const turn = (ms) => new Promise((r) => setTimeout(r, ms));

async function settle(start, rounds) {
  for (let i = 0; i < rounds && dr.memory().cpu.tensors > start.cpu.tensors; ++i) {
    gc();
    await turn(10);
  }
}

async function scenario(name, make, rounds = 100) {
  for (let i = 0; i < 3; ++i) {
    gc();
    await turn(10);
  }
  const start = dr.memory();
  make();
  const made = dr.memory();
  await settle(start, rounds);
  const end = dr.memory();
  return {
    name,
    start: { tensors: start.cpu.tensors, bytes: start.cpu.bytes },
    made: { tensors: made.cpu.tensors, bytes: made.cpu.bytes },
    end: { tensors: end.cpu.tensors, bytes: end.cpu.bytes },
  };
}

async function main() {
  const out = [];
  // fewer tensors than a nursery sweep takes: registered at the next turn of the loop
  out.push(await scenario('few', () => {
    for (let i = 0; i < 200; ++i) dr.zeros([1000]);
  }));
  // one long synchronous burst: swept after every 256 new tensors or 64 MiB of them
  out.push(await scenario('burst', () => {
    for (let i = 0; i < 3000; ++i) dr.add(dr.zeros([8]), 1);
    for (let i = 0; i < 6; ++i) dr.zeros([1 << 22]).dataSync();  // 16 MiB each, written
    const kept = dr.zeros([2]);
    for (let i = 0; i < 1000; ++i) dr.add(kept, 1).dispose();  // disposed at once: nothing to collect
    kept.dispose();
  }));
  // a tensor still referenced is never collected
  const held = [];
  out.push(await scenario('held', () => {
    for (let i = 0; i < 10; ++i) held.push(dr.ones([3]));
  }, 5));
  const heldSum = held.reduce((s, t) => s + t.sum().item(), 0);
  process.stdout.write(JSON.stringify({ scenarios: out, heldSum }) + '\n');
}

main().catch((e) => {
  process.stderr.write(String(e && e.stack || e) + '\n');
  process.exit(1);
});
