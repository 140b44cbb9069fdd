// Finding a Python that has PyTorch, for the twin's tests. Debian's python3-torch installs into
// the system Python (/usr/bin/python3), which need not be the first python3 on PATH (pyenv);
// DUALROUTE_PYTHON names another. .ci/run installs python3-torch, so in CI (CI set) a missing
// PyTorch is a failure; elsewhere the twin's tests are skipped with the reason printed.
import { spawnSync } from 'child_process';
import * as path from 'path';

export const REPO = path.resolve(__dirname, '..', '..');

let found: string | null | undefined;

export function torchPython(): string | null {
  if (found !== undefined) return found;
  const candidates = [process.env.DUALROUTE_PYTHON, '/usr/bin/python3', 'python3'].filter((p): p is string => !!p);
  found = null;
  for (const py of candidates) {
    const r = spawnSync(py, ['-c', 'import torch, numpy'], { encoding: 'utf8', timeout: 60_000 });
    if (r.status === 0) {
      found = py;
      break;
    }
  }
  return found;
}

export const MISSING = 'PyTorch not found: apt-get install python3-torch libopenblas0-pthread (or set DUALROUTE_PYTHON)';

/** describe() when PyTorch is there; in CI a failing test when it is not; elsewhere a skip. */
export function describeWithTorch(name: string, body: (py: string) => void): void {
  const py = torchPython();
  if (py) {
    describe(name, () => body(py));
  } else if (process.env.CI) {
    test(`${name}: PyTorch is installed`, () => {
      throw new Error(MISSING);
    });
  } else {
    // eslint-disable-next-line no-console
    console.warn(`${name}: skipped: ${MISSING}`);
    describe.skip(name, () => body('python3'));
  }
}

/** Runs a Python script of python/ and returns its stdout; a failure throws with its stderr. */
export function runPython(py: string, args: string[], options: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): string {
  const r = spawnSync(py, args, { cwd: REPO, encoding: 'utf8', timeout: options.timeoutMs ?? 300_000, env: { ...process.env, ...options.env } });
  if (r.status !== 0) throw new Error(`${py} ${args.join(' ')} failed (${r.status ?? r.signal}):\n${(r.stderr || '').slice(-4000)}\n${(r.stdout || '').slice(-2000)}`);
  return r.stdout;
}
