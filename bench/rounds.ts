// What the round-based benchmarks (models.ts, serve.ts) share: their two flags and the median
// with its spread.

export interface RoundsOptions {
  rounds: number;
  json: string;
}

/** Reads `--rounds N --json path`; prints the usage and exits 2 on anything else. */
export function parseRounds(argv: string[], script: string, defaultRounds: number): RoundsOptions {
  const o: RoundsOptions = { rounds: defaultRounds, json: '' };
  for (let i = 0; i < argv.length; ++i) {
    const a = argv[i];
    if (a === '--rounds' && i + 1 < argv.length) o.rounds = Number(argv[++i]);
    else if (a === '--json' && i + 1 < argv.length) o.json = argv[++i];
    else {
      console.error(`usage: node dist/bench/${script}.js [--rounds N] [--json path]`);
      process.exit(2);
    }
  }
  if (!(Number.isInteger(o.rounds) && o.rounds >= 1)) {
    console.error('--rounds must be an integer >= 1');
    process.exit(2);
  }
  return o;
}

/** The median of the rounds and their range. */
export const stats = (xs: number[]): { median: number; min: number; max: number } => {
  const s = xs.slice().sort((a, b) => a - b);
  return { median: s[Math.floor(s.length / 2)], min: s[0], max: s[s.length - 1] };
};
