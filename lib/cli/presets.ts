// Built-in model presets and the default corpus (what `npm start` and `dualroute train` use when
// given nothing): no download, only files the installed package already has.
import * as fs from 'fs';
import * as path from 'path';
import type { DualRouteLMConfig } from '../models';

/** Model presets (vocabSize comes from the tokenizer unless a config sets it). */
export const PRESETS: Record<string, Omit<DualRouteLMConfig, 'vocabSize'>> = {
  // a few seconds per hundred steps on two cores
  tiny: {
    dModel: 64, nHeads: 4, nLayers: 2, maxSeq: 128, seed: 0,
    pattern: [{ local: 'window', window: 16, global: 'full', fusion: 'gated' }],
  },
  // the main job's model: sliding-window local attention everywhere, a gated global path
  small: {
    dModel: 128, nHeads: 4, nLayers: 4, maxSeq: 128, seed: 0,
    pattern: [{ local: 'window', window: 32, global: 'none' }, { local: 'window', window: 32, global: 'full', fusion: 'gated' }],
  },
};

// the package's root (dist/lib/cli -> .., or lib/cli under ts-node / jest)
function packageRoot(): string {
  let d = __dirname;
  for (let i = 0; i < 5; ++i) {
    if (fs.existsSync(path.join(d, 'package.json'))) return d;
    d = path.dirname(d);
  }
  return process.cwd();
}

/**
 * The default training text: TypeScript declaration files that `npm install` brings (Node's own,
 * @types/node), else the package's own declarations (dist/lib) and docs. A list of files.
 */
export function defaultCorpus(maxBytes = 3 << 20): string[] {
  const root = packageRoot();
  const candidates = [path.join(root, 'node_modules', '@types', 'node'), path.join(root, 'dist', 'lib'), path.join(root, 'docs')];
  const files: string[] = [];
  let bytes = 0;
  const walk = (dir: string) => {
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    } catch {
      return;
    }
    for (const e of entries) {
      if (bytes >= maxBytes) return;
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile() && (p.endsWith('.d.ts') || p.endsWith('.md'))) {
        files.push(p);
        bytes += fs.statSync(p).size;
      }
    }
  };
  for (const c of candidates) if (bytes < maxBytes) walk(c);
  return files;
}
