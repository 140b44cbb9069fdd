#!/usr/bin/env node
// Builds the native addon with cmake-js (see binding.gyp.md). Environment:
//   DUALROUTE_CUDA=AUTO|ON|OFF     build the CUDA backend (AUTO: when nvcc is found)
//   DUALROUTE_CUDA_ARCHS="80;90"   CUDA architectures (default: the local GPU's, else 90)
//   DUALROUTE_BUILD_JOBS=N         parallel compile jobs (default: the cores present)
//   DUALROUTE_DEBUG=1              debug build
'use strict';
const { spawnSync } = require('child_process');
const os = require('os');
const path = require('path');

const root = path.resolve(__dirname, '..');
const cmakeJs = require.resolve('cmake-js/bin/cmake-js');
// configure runs every time (cheap when nothing changed) so that changed options take effect;
// then build compiles what is out of date.
const args = [cmakeJs, 'configure', '-d', root, '--out', path.join(root, 'build')];
const cuda = (process.env.DUALROUTE_CUDA || 'AUTO').toUpperCase();
if (!['AUTO', 'ON', 'OFF'].includes(cuda)) {
  console.error(`DUALROUTE_CUDA must be AUTO, ON or OFF, got ${process.env.DUALROUTE_CUDA}`);
  process.exit(1);
}
args.push(`--CDDUALROUTE_CUDA=${cuda}`);
args.push(`--CDDUALROUTE_CUDA_ARCHS=${process.env.DUALROUTE_CUDA_ARCHS || ''}`);
if (process.env.DUALROUTE_DEBUG === '1') args.push('--debug');
const jobs = Number(process.env.DUALROUTE_BUILD_JOBS) || (os.availableParallelism ? os.availableParallelism() : os.cpus().length);
const t0 = Date.now();
let r = spawnSync(process.execPath, args, { stdio: 'inherit', cwd: root });
if (r.status === 0) {
  const buildArgs = [cmakeJs, 'build', '-d', root, '--out', path.join(root, 'build'), '--parallel', String(jobs)];
  r = spawnSync(process.execPath, buildArgs.concat(args.slice(6).filter((a) => a === '--debug')), { stdio: 'inherit', cwd: root });
}
if (r.status !== 0) {
  console.error('dualroute: the native build failed. See binding.gyp.md (Troubleshooting); DUALROUTE_CUDA=OFF skips CUDA.');
  process.exit(r.status || 1);
}
console.log(`dualroute: native build done in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
