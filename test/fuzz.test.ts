// The fuzzer (test/fuzz/fuzz.js) calls every export and Tensor method with hostile arguments in
// child processes. Every call must return or throw one of the library's typed errors: no
// TypeError from inside the library, no abort, no hang. The canary run shows the fuzzer does
// catch and count each kind of fault, so a clean run means something.
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

const FUZZ = path.join(__dirname, 'fuzz', 'fuzz.js');
const SECONDS = Number(process.env.DUALROUTE_FUZZ_SECONDS ?? 20);
// a fixed seed keeps CI repeatable; set DUALROUTE_FUZZ_SEED to explore other call sequences
const SEED = Number(process.env.DUALROUTE_FUZZ_SEED ?? 1);

interface Report {
  targets: number;
  total: number;
  counts: { ok: number; typed: number; untyped: number; abort: number; hang: number };
  faults: Array<{ kind: string; what: string; detail: string }>;
}

function fuzz(args: string[]): { status: number | null; report: Report; stdout: string } {
  const json = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'dr-fuzz-test-')), 'report.json');
  const r = spawnSync(process.execPath, [FUZZ, '--json', json, ...args], { encoding: 'utf8', timeout: (SECONDS + 120) * 1000 });
  const report = JSON.parse(fs.readFileSync(json, 'utf8')) as Report;
  fs.rmSync(path.dirname(json), { recursive: true, force: true });
  return { status: r.status, report, stdout: r.stdout };
}

describe('fuzzing every export', () => {
  test('the canary targets are caught: an untyped error, an abort and a hang are each counted', () => {
    const { status, report } = fuzz(['--canary', '--seconds', '8', '--call-timeout', '1']);
    expect(status).toBe(1);
    expect(report.targets).toBe(3);
    expect(report.counts.untyped).toBeGreaterThan(0);
    expect(report.counts.abort).toBeGreaterThan(0);
    expect(report.counts.hang).toBeGreaterThan(0);
  });

  test(`${SECONDS} s of hostile calls: every one returns or throws a typed error`, () => {
    const { status, report, stdout } = fuzz(['--seconds', String(SECONDS), '--seed', String(SEED), '--children', '1']);
    const line = stdout.trim().split('\n').pop();
    // the counts go to the log: how much was exercised, and how
    process.stdout.write(`seed ${SEED}: ${line}\n`);
    expect(report.faults).toEqual([]);
    expect(status).toBe(0);
    expect(report.targets).toBeGreaterThan(150);
    expect(report.total).toBeGreaterThan(1000);
    expect(report.counts.ok).toBeGreaterThan(0);
    expect(report.counts.typed).toBeGreaterThan(0);
  });
});
