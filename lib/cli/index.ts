#!/usr/bin/env node
// The `dualroute` command line (commander): train, eval, sample, inspect. The commands themselves
// are in lib/cli/run.ts. Exit codes: 0 done, 1 bad flags (commander's message), 2 a CliError (a
// missing file, a bad config: its message), 130 training interrupted (a checkpoint was written).
import { Command, InvalidArgumentError, Option } from 'commander';
import '../index';  // the whole library, Tensor methods included
import { DualrouteError } from '../errors';
import { CliError, evalCommand, inspectCommand, sampleCommand, serveCommand, trainCommand, TrainArgs } from './run';
import { PRESETS } from './presets';

function int(min: number) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`Expected an integer >= ${min} but received '${v}'.`);
    return n;
  };
}
function num(min: number, max = Infinity, inclusiveMax = true) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < min || n > max || (!inclusiveMax && n === max)) throw new InvalidArgumentError(`Expected a number in [${min}, ${max}${inclusiveMax ? ']' : ')'} but received '${v}'.`);
    return n;
  };
}

export function program(): Command {
  const p = new Command('dualroute')
    .description('Dual-level routing language models: train, evaluate, sample and inspect from the command line.')
    .showHelpAfterError('(add --help for the options)')
    .exitOverride();
  const device = () => new Option('--device <device>', 'cpu, cuda or auto').default('auto');

  p.command('train')
    .description('train a model into a run folder (checkpoint, metrics.jsonl, plots); --resume continues it')
    .requiredOption('-o, --out <dir>', 'run folder')
    .option('--config <file>', 'model config (JSON: a DualRouteLM config; for --task seq2seq a DualRouteSeq2Seq one)')
    .addOption(new Option('--preset <name>', 'built-in model (when no --config)').choices(Object.keys(PRESETS)))
    .option('-d, --data <paths...>', 'text files or folders (lm), JSONL files (classify: {text,label}; seq2seq: {source,target}), or synthetic:recall|copy|pattern; default: a built-in corpus')
    .addOption(new Option('--task <task>', 'what to train').choices(['lm', 'classify', 'seq2seq']).default('lm'))
    .option('--tokenizer <spec>', "'byte' or a Hugging Face tokenizer.json (or its folder)", 'byte')
    .option('--steps <n>', 'optimizer steps', int(1), 200)
    .option('--batch <n>', 'sequences per step', int(1), 8)
    .option('--seq <n>', 'tokens per sequence', int(1), 128)
    .option('--lr <x>', 'peak learning rate', num(0), 3e-3)
    .option('--warmup <n>', 'warmup steps', int(0))
    .option('--accumulate <n>', 'micro-batches per step', int(1), 1)
    .option('--clip <x>', 'gradient norm clip (0: off)', num(0), 1)
    .addOption(new Option('--precision <p>', 'parameter dtype').choices(['float32', 'bfloat16']).default('float32'))
    .option('--seed <n>', 'seed of the run (data order, dropout)', int(0), 0)
    .option('--eval-every <n>', 'steps between evaluations (default steps / 5)', int(1))
    .option('--eval-batches <n>', 'validation batches per evaluation (default all)', int(1))
    .option('--val-fraction <x>', 'share of the data held out for validation', num(0, 1, false), 0.05)
    .option('--checkpoint-every <n>', 'steps between checkpoints', int(1))
    .option('--patience <n>', 'stop after this many evaluations without improvement', int(1))
    .addOption(new Option('--pooling <p>', 'classify: pooling').choices(['mean', 'last']).default('mean'))
    .option('--resume', 'continue from the run folder\'s checkpoint', false)
    .option('--no-progress', 'no progress bar')
    .option('--no-plots', 'no plots at the end')
    .addOption(device())
    .action(async (o) => {
      const r = await trainCommand(o as TrainArgs);
      if (r.interrupted) process.exitCode = 130;
    });

  p.command('eval')
    .description('loss, perplexity and accuracy of a checkpoint (a file or a run folder), as a JSON line')
    .argument('<checkpoint>', 'a .safetensors file or a run folder')
    .option('-d, --data <paths...>', 'data to evaluate on (default: the run\'s validation split)')
    .option('--tokenizer <spec>', 'override the run\'s tokenizer')
    .option('--batch <n>', 'sequences per batch', int(1), 8)
    .option('--seq <n>', 'tokens per sequence', int(1), 128)
    .option('--max-batches <n>', 'at most this many batches', int(1))
    .addOption(device())
    .action(async (checkpoint, o) => {
      await evalCommand({ checkpoint, ...o });
    });

  p.command('sample')
    .description('continue a prompt with a language model, streaming the text')
    .argument('<checkpoint>', 'a .safetensors file or a run folder')
    .option('-p, --prompt <text>', 'the prompt', '')
    .option('-n, --max-tokens <n>', 'tokens to generate', int(1), 100)
    .option('-t, --temperature <x>', '0: greedy', num(0), 0.8)
    .option('--top-k <n>', 'sample among the k most likely', int(0))
    .option('--top-p <x>', 'nucleus sampling', num(0, 1))
    .option('--seed <n>', 'seed of the sampling', int(0))
    .option('--tokenizer <spec>', 'override the run\'s tokenizer')
    .addOption(device())
    .action(async (checkpoint, o) => {
      await sampleCommand({ checkpoint, ...o });
    });

  p.command('inspect')
    .description('a checkpoint\'s config, parameter counts and routing statistics on a text')
    .argument('<checkpoint>', 'a .safetensors file or a run folder')
    .option('--text <text>', 'the text to route (default: a built-in sentence)')
    .option('--json', 'print JSON', false)
    .addOption(device())
    .action(async (checkpoint, o) => {
      await inspectCommand({ checkpoint, ...o });
    });
  p.command('serve')
    .description('an OpenAI-compatible server (/v1/completions, /v1/chat/completions, /v1/models, /health, /metrics; the routing page at /)')
    .argument('<checkpoint>', 'a .safetensors file or a run folder')
    .option('--host <host>', 'address to listen on', '127.0.0.1')
    .option('--port <n>', 'port', int(0), 8080)
    .option('--model-name <name>', 'the model id clients name', 'dualroute')
    .option('--concurrency <n>', 'requests generating at once', int(1), 32)
    .option('--batch <n>', 'sequences sharing each decode step (continuous batching)', int(1), 16)
    .option('--queue <n>', 'requests waiting (then 429)', int(0), 64)
    .option('--max-tokens <n>', 'largest max_tokens', int(1), 1024)
    .option('--tokenizer <spec>', 'override the run\'s tokenizer')
    .addOption(device())
    .action(async (checkpoint, o) => {
      await serveCommand({ checkpoint, ...o });
    });
  return p;
}

export async function main(argv: string[] = process.argv): Promise<number> {
  const p = program();
  try {
    await p.parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (e) {
    const err = e as { code?: string; exitCode?: number; message?: string };
    if (typeof err.code === 'string' && err.code.startsWith('commander.')) {
      // help and version exit 0; commander has printed its message
      return err.exitCode ?? 1;
    }
    const cmd = argv[2] ?? '';
    if (e instanceof CliError || e instanceof DualrouteError) {
      process.stderr.write(`dualroute ${cmd}: ${(e as Error).message}\n`);
      return 2;
    }
    throw e;
  }
}

if (require.main === module) {
  main().then((code) => {
    process.exitCode = code;
  });
}
