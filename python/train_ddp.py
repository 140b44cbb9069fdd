"""Data-parallel training of the PyTorch twin of DualRouteLM (DistributedDataParallel: gloo on
CPUs, NCCL on GPUs). The checkpoint it writes is dualroute's own layout, so Node loads it back
(loadModel) for serving.

  torchrun --standalone --nproc_per_node 2 python/train_ddp.py \
      --config model.json --data corpus.txt --steps 200 --batch 16 --seq 128 --out run/model.safetensors

Without torchrun it trains in one process (the same global batches: the reference the
data-parallel run must match). Data: a text file read as bytes (token id = byte, so vocabSize must
be at least 256), or --tokens FILE.safetensors holding an int32 'tokens' tensor of ids. Every rank
draws the same global batch of windows from a seeded generator and trains on its own rows of it.
"""
import argparse
import datetime
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn as nn  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

from dualroute_twin import DualRouteLM, load_model, safetensors_io, save_model  # noqa: E402


class LossOf(nn.Module):
    """The model's training loss as forward(), so that DistributedDataParallel wraps the whole step."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids, targets):
        return self.model.loss(ids, targets)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument('--config', help='a DualRouteLM config (JSON file) to train from scratch')
    src.add_argument('--checkpoint', help='a dualroute checkpoint (.safetensors) to continue from')
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument('--data', help='a text file, read as bytes (token id = byte value)')
    data.add_argument('--tokens', help="a safetensors file with an int32 'tokens' tensor")
    p.add_argument('--out', required=True, help='where to write the trained checkpoint (.safetensors)')
    p.add_argument('--steps', type=int, default=100)
    p.add_argument('--batch', type=int, default=8, help='global batch (sequences per step over all ranks)')
    p.add_argument('--seq', type=int, default=None, help="tokens per sequence (default and most: the config's maxSeq)")
    p.add_argument('--lr', type=float, default=1e-3)
    p.add_argument('--weight-decay', type=float, default=0.0)
    p.add_argument('--clip', type=float, default=1.0, help='gradient norm clip (0: none)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--threads', type=int, default=0, help='torch threads per process (0: cores / processes)')
    p.add_argument('--device', choices=['auto', 'cpu', 'cuda'], default='auto')
    p.add_argument('--log-every', type=int, default=10)
    return p.parse_args(argv)


def fail(msg):
    print(f'train_ddp: {msg}', file=sys.stderr)
    sys.exit(2)


def load_tokens(args, vocab):
    if args.data:
        if not os.path.isfile(args.data):
            fail(f'--data {args.data}: no such file')
        if vocab < 256:
            fail(f'--data is read as bytes (ids 0..255) but the model\'s vocabSize is {vocab}; use --tokens or vocabSize >= 256')
        with open(args.data, 'rb') as f:
            return torch.frombuffer(bytearray(f.read()), dtype=torch.uint8).long()
    if not os.path.isfile(args.tokens):
        fail(f'--tokens {args.tokens}: no such file')
    tensors, _ = safetensors_io.load(args.tokens)
    if 'tokens' not in tensors:
        fail(f"--tokens {args.tokens}: Expected a tensor named 'tokens' but found {sorted(tensors)}")
    t = tensors['tokens'].long().reshape(-1)
    if t.numel() and (t.min() < 0 or t.max() >= vocab):
        fail(f'--tokens: ids must lie in [0, {vocab}) but range over [{int(t.min())}, {int(t.max())}]')
    return t


def main(argv=None):
    args = parse_args(argv)
    world = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    use_cuda = args.device == 'cuda' or (args.device == 'auto' and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        fail('--device cuda but no CUDA device is visible')
    device = torch.device(f'cuda:{local_rank}' if use_cuda else 'cpu')
    if use_cuda:
        torch.cuda.set_device(device)
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // world))
    if world > 1:
        # a peer that is gone fails the collectives within a minute instead of the store's 5 minutes
        dist.init_process_group('nccl' if use_cuda else 'gloo', timeout=datetime.timedelta(seconds=60))
    if args.batch % world:
        fail(f'--batch {args.batch} must be a multiple of the number of processes ({world})')

    if args.config:
        try:
            with open(args.config) as f:
                config = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            fail(f'--config {args.config}: {e}')
        try:
            model = DualRouteLM(config)  # seeded by config.seed: the same initial weights on every rank
        except ValueError as e:
            fail(f'--config {args.config}: {e}')
    else:
        try:
            model = load_model(args.checkpoint)
        except (OSError, ValueError) as e:
            fail(f'--checkpoint {args.checkpoint}: {e}')
        if not isinstance(model, DualRouteLM):
            fail(f'--checkpoint {args.checkpoint}: Expected a DualRouteLM checkpoint but found a {type(model).__name__}')
    c = model.config
    args.seq = c['maxSeq'] if args.seq is None else args.seq
    if args.seq < 1:
        fail(f'--seq must be at least 1 but is {args.seq}')
    if args.seq > c['maxSeq']:
        fail(f"--seq {args.seq} is longer than the model's maxSeq ({c['maxSeq']})")
    tokens = load_tokens(args, c['vocabSize'])
    if tokens.numel() < args.seq + 1:
        fail(f'the data holds {tokens.numel()} tokens, fewer than --seq + 1 ({args.seq + 1})')
    model.to(device).train()
    step_fn = LossOf(model)
    if world > 1:
        step_fn = DistributedDataParallel(step_fn, device_ids=[local_rank] if use_cuda else None)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    gen = torch.Generator().manual_seed(args.seed)  # the same windows on every rank
    torch.manual_seed(args.seed + 1 + rank)  # dropout and random routing differ per rank
    per = args.batch // world
    first = last = None
    t0 = time.time()
    for step in range(args.steps):
        starts = torch.randint(0, tokens.numel() - args.seq, (args.batch,), generator=gen)
        rows = starts[rank * per:(rank + 1) * per]
        win = torch.stack([tokens[s:s + args.seq + 1] for s in rows.tolist()]).to(device)
        loss, lm = step_fn(win[:, :-1], win[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if args.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        value = lm.detach()
        if world > 1:
            dist.all_reduce(value)
            value /= world
        value = float(value)
        first = value if first is None else first
        last = value
        if rank == 0 and args.log_every and (step % args.log_every == 0 or step == args.steps - 1):
            print(json.dumps({'step': step, 'loss': round(value, 5)}), flush=True)
    seconds = time.time() - t0
    # every replica must hold the same weights: compare each with rank 0's
    diff = 0.0
    if world > 1:
        for p in model.parameters():
            ref = p.detach().clone()
            dist.broadcast(ref, 0)
            diff = max(diff, float((p.detach() - ref).abs().max()))
        d = torch.tensor([diff], device=device)
        dist.all_reduce(d, op=dist.ReduceOp.MAX)
        diff = float(d)
    if rank == 0:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        save_model(args.out, model.cpu(), step=args.steps)
        print(json.dumps({'done': True, 'processes': world, 'backend': dist.get_backend() if world > 1 else None,
                          'steps': args.steps, 'firstLoss': first, 'lastLoss': last,
                          'tokensPerSecond': round(args.steps * args.batch * args.seq / max(seconds, 1e-9), 1),
                          'replicaMaxDiff': diff, 'out': args.out}), flush=True)
    if not math.isfinite(last):
        fail(f'the loss is not finite ({last})')
    if world > 1:
        # Every rank has passed the replica check (a collective) and rank 0 has written and closed
        # the checkpoint: leave without destroy_process_group or the interpreter's teardown. With
        # gloo on torch 1.13, a rank tearing its group down while its peer is still saving (or
        # already gone) could wait for the store's 300 s timeout and exit 1 (seen twice in CI:
        # rank 0's summary printed, then torchrun stalled ~300 s).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == '__main__':
    main()
