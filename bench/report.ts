// The benchmark report: a markdown table and a plot (SVG and PNG) of every row of a bench/run.ts
// document against its floor (FLOPs over the compute ceiling, or bytes over the bandwidth,
// whichever is larger) and its anchor, with the machine and the command that made it.
// `node dist/bench/run.js ... --report bench/results/latest` writes latest.md, latest.svg and
// latest.png; `node dist/bench/report.js doc.json prefix` redraws them from a saved --json file.
import * as fs from 'fs';
import * as path from 'path';
import * as dr from '../lib';
import type { BenchDoc, Row } from './run';

const label = (r: Row): string => `${r.op} ${r.shape}${r.dtype === 'float32' ? '' : ` ${r.dtype}`}`;

function num(v: number | undefined, digits = 3): string {
  if (v === undefined || !Number.isFinite(v)) return '-';
  if (v >= 1000) return v.toFixed(0);
  return v.toPrecision(digits);
}

function rate(r: Row): string {
  return r.gflops !== undefined ? `${num(r.gflops, 4)} GFLOP/s` : r.gbps !== undefined ? `${num(r.gbps, 4)} GB/s` : '-';
}

/** One line naming the machine, the ceilings and their sources. */
export function machineLine(d: BenchDoc): string {
  return `${d.device === 'cuda' ? 'CUDA' : 'CPU'}: ${d.device_name}; node ${d.node}; load average ${d.loadavg[0].toFixed(1)} at the start`;
}

/** The markdown report. */
export function markdown(d: BenchDoc, images?: { svg: string; png: string }): string {
  const c = d.ceilings;
  const hasCounts = d.rows.some((r) => r.instructions !== undefined);
  const lines = [
    '# Kernel benchmarks against their floors',
    '',
    `Measured ${d.date.slice(0, 16).replace('T', ' ')} UTC on ${machineLine(d)}.`,
    '',
    `Command: \`${d.command}\``,
    '',
    `Ceilings: compute ${num(c.fp32_gflops ?? undefined, 4)} GFLOP/s float32 (${c.compute_source || 'none'})${d.device === 'cuda' ? `, bf16 ${num(c.bf16_gflops ?? undefined, 4)} GFLOP/s` : ''}; ` +
      `bandwidth ${num(c.gbps ?? undefined, 4)} GB/s (${c.bandwidth_source || 'none'}).`,
    '',
    'A row\'s floor is the larger of its FLOPs over the compute ceiling and its bytes over the bandwidth (the bound column says which); ' +
      '"% of floor" is floor ms / ms: 100% would run at the roofline. ms is the median call; ours/anchor above 1 means faster than the anchor' +
      (hasCounts ? `. Ir: instructions per call under callgrind (${d.counts?.threads ?? 1} thread, ${d.counts?.isa ?? '?'}) at the counted shape.` : '.'),
    '',
    `| op | shape | dtype | ms | rate | bound | floor ms | % of floor | anchor | anchor ms | ours/anchor |${hasCounts ? ' Ir per call | counted at |' : ''}`,
    `| --- | --- | --- | ---: | ---: | --- | ---: | ---: | --- | ---: | ---: |${hasCounts ? ' ---: | --- |' : ''}`,
  ];
  for (const r of d.rows) {
    lines.push(`| ${r.op} | ${r.shape} | ${r.dtype} | ${num(r.ms, 4)} | ${rate(r)} | ${r.bound ?? '-'} | ${num(r.floor_ms)} | ${r.pct_of_floor !== undefined ? `${r.pct_of_floor.toFixed(1)}%` : '-'} | ` +
      `${r.anchor ?? '-'} | ${num(r.anchor_ms, 4)} | ${r.ratio_to_anchor !== undefined ? r.ratio_to_anchor.toFixed(2) : '-'} |` +
      (hasCounts ? ` ${r.instructions !== undefined ? r.instructions.toLocaleString('en-US') : '-'} | ${r.count_shape ?? '-'} |` : ''));
  }
  const attn = d.rows.filter((r) => r.ratio_to_matmul !== undefined);
  if (attn.length) {
    lines.push('');
    lines.push(`Attention against our own matmul of this run: ${attn.map((r) => `${r.op} ${r.ratio_to_matmul!.toFixed(2)}x`).join(', ')}.`);
  }
  if (images) {
    lines.push('');
    lines.push(`![every row's % of its floor, with its anchor](${path.basename(images.png)}) (also ${path.basename(images.svg)})`);
  }
  lines.push('');
  return lines.join('\n');
}

/** The plot: each row's % of its floor (a bar), its anchor's (a diamond), the floor at 100%. */
export function plotSpec(d: BenchDoc): object {
  const rows = d.rows.filter((r) => r.pct_of_floor !== undefined);
  const bars = rows.map((r) => ({ row: label(r), pct: r.pct_of_floor!, bound: r.bound === 'compute' ? 'compute-bound (FLOPs / peak)' : 'memory-bound (bytes / bandwidth)', text: `${rate(r)}, ${num(r.ms, 3)} ms` }));
  const anchors = rows.filter((r) => r.anchor_ms !== undefined).map((r) => ({ row: label(r), pct: (100 * r.floor_ms!) / r.anchor_ms!, anchor: `anchor: ${r.anchor}` }));
  // room on the right for the rate and time of each row, written at the right edge
  const top = Math.max(100, ...bars.map((b) => b.pct), ...anchors.map((a) => a.pct)) * 1.4;
  const order = rows.map(label);
  const c = d.ceilings;
  const y = { field: 'row', type: 'nominal', sort: order, title: null, axis: { labelLimit: 320 } };
  const x = { field: 'pct', type: 'quantitative', title: '% of the floor (floor ms / ms; 100% = at the roofline)', scale: { domain: [0, top] } };
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
    title: {
      text: 'dualroute kernels against their floors',
      subtitle: [
        `${d.device_name}, ${d.date.slice(0, 10)}${d.quick ? ', --quick sizes' : ''}`,
        `ceilings: ${num(c.fp32_gflops ?? undefined, 4)} GFLOP/s fp32 (${(c.compute_source || 'none').split(':')[0]}), ${num(c.gbps ?? undefined, 4)} GB/s (${(c.bandwidth_source || 'none').split(':')[0]})`,
      ],
    },
    width: 640,
    height: { step: 26 },
    layer: [
      { data: { values: bars }, mark: { type: 'bar', height: 16 }, encoding: { y, x, color: { field: 'bound', type: 'nominal', title: null, scale: { range: [dr.LOSS_COLORS.train, dr.LOSS_COLORS.val] }, legend: { orient: 'bottom', labelLimit: 400 } } } },
      { data: { values: bars }, mark: { type: 'text', align: 'right', dx: -4, fontSize: 10 }, encoding: { y, x: { datum: top, type: 'quantitative' }, text: { field: 'text' } } },
      ...(anchors.length ? [{ data: { values: anchors }, mark: { type: 'point', shape: 'diamond', filled: true, size: 110, color: 'black' }, encoding: { y, x, shape: { field: 'anchor', type: 'nominal', title: null, scale: { range: ['diamond', 'triangle-up', 'square', 'cross'] }, legend: { orient: 'bottom' } } } }] : []),
      { data: { values: [{ pct: 100 }] }, mark: { type: 'rule', color: '#d62728', strokeDash: [5, 3], strokeWidth: 1.5 }, encoding: { x: { field: 'pct', type: 'quantitative' } } },
      { data: { values: [{ pct: 100, t: 'floor' }] }, mark: { type: 'text', color: '#d62728', align: 'center', baseline: 'bottom', y: -4 }, encoding: { x: { field: 'pct', type: 'quantitative' }, text: { field: 't' } } },
    ],
  };
}

/** Writes PREFIX.md, PREFIX.svg and PREFIX.png; returns their paths. */
export async function writeReport(prefix: string, d: BenchDoc): Promise<string[]> {
  const dir = path.dirname(path.resolve(prefix));
  const name = path.basename(prefix);
  const p = await dr.writePlots(dir, name, plotSpec(d), { width: 1400 });
  const md = path.join(dir, `${name}.md`);
  const tmp = path.join(dir, `.${name}.md.${process.pid}.tmp`);
  fs.writeFileSync(tmp, markdown(d, p));
  fs.renameSync(tmp, md);
  return [md, p.svg, p.png].map((f) => (path.relative(process.cwd(), f).startsWith('..') ? f : path.relative(process.cwd(), f)));
}

// node dist/bench/report.js doc.json prefix: redraws the report of a saved run
if (require.main === module) {
  const [doc, prefix] = process.argv.slice(2);
  if (!doc || !prefix) {
    console.error('usage: node dist/bench/report.js results.json prefix   (writes prefix.md, prefix.svg, prefix.png)');
    process.exit(1);
  }
  writeReport(prefix, JSON.parse(fs.readFileSync(doc, 'utf8')) as BenchDoc).then((p) => console.log(`wrote ${p.join(', ')}`), (e) => {
    console.error(e);
    process.exit(1);
  });
}
