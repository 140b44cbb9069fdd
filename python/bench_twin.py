"""The PyTorch side of bench/twin.ts: one long-lived process that answers one JSON request per
line on stdin with one JSON line on stdout, so that the Node side interleaves the two libraries
round by round in one run. Each measurement is timed here (time.perf_counter around the work
alone), not across the pipe.

  {"cmd": "init", "model": ckpt, "inputs": st, "lr": 0.001, "threads": 2}
      loads the checkpoint twice (a model to train with AdamW, and a fixed one to decode),
      reads ids and targets, runs one warm-up step and one warm-up decode; answers the setup
      (torch version, threads, the BLAS library loaded) and the loss of the initial weights
  {"cmd": "train"}                 one training step (forward, backward, AdamW): ms, loss
  {"cmd": "decode", "prompt": [..], "newTokens": n}
      greedy decoding through dualroute_twin.decode.DecodeCache (prompt fed one token per
      step, then each drawn token): ms, tokens
  {"cmd": "quit"}

OPENBLAS_NUM_THREADS should be set by the caller (OpenBLAS reads it when it loads).
"""
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from dualroute_twin import load_model, safetensors_io  # noqa: E402
from dualroute_twin.decode import generate_cached  # noqa: E402


def blas_library():
    """The BLAS shared libraries mapped into this process (resolved paths)."""
    libs = set()
    try:
        with open('/proc/self/maps') as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 6 and ('blas' in parts[5] or 'lapack' in parts[5]):
                    libs.add(os.path.realpath(parts[5]))
    except OSError:
        pass
    return sorted(libs)


class Bench:
    def __init__(self, req):
        torch.set_num_threads(int(req.get('threads', 2)))
        self.train_model = load_model(req['model'])
        self.train_model.train()
        self.decode_model = load_model(req['model'])
        self.decode_model.eval()
        inputs, _ = safetensors_io.load(req['inputs'])
        self.ids, self.targets = inputs['ids'], inputs['targets']
        self.opt = torch.optim.AdamW(self.train_model.parameters(), lr=req['lr'], betas=tuple(req['betas']),
                                     eps=req['eps'], weight_decay=req['weightDecay'])
        with torch.no_grad():
            self.initial_loss = float(self.train_model.loss(self.ids, self.targets)[0])

    def setup(self):
        blas = re.search(r'BLAS_INFO=([^,\s]+)', torch.__config__.show())
        return {'torch': torch.__version__, 'threads': torch.get_num_threads(),
                'openblasThreads': os.environ.get('OPENBLAS_NUM_THREADS'), 'ompThreads': os.environ.get('OMP_NUM_THREADS'),
                'ompWaitPolicy': os.environ.get('OMP_WAIT_POLICY'),
                'blasInfo': blas.group(1) if blas else None, 'blasLibraries': blas_library(),
                'params': sum(p.numel() for p in self.train_model.parameters()), 'initialLoss': self.initial_loss}

    def train(self):
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        loss, _ = self.train_model.loss(self.ids, self.targets)
        loss.backward()
        self.opt.step()
        ms = (time.perf_counter() - t0) * 1e3
        return {'ms': ms, 'loss': float(loss.detach())}

    def decode(self, prompt, new_tokens):
        t0 = time.perf_counter()
        tokens = generate_cached(self.decode_model, prompt, new_tokens)
        ms = (time.perf_counter() - t0) * 1e3
        return {'ms': ms, 'tokens': tokens}


def main():
    bench = None
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        req = json.loads(line)
        cmd = req.get('cmd')
        try:
            if cmd == 'init':
                bench = Bench(req)
                bench.train()  # warm-up, as the Node side runs one
                bench.decode(req.get('prompt', [0]), 2)
                out = bench.setup()
            elif cmd == 'train':
                out = bench.train()
            elif cmd == 'decode':
                out = bench.decode(req['prompt'], req['newTokens'])
            elif cmd == 'quit':
                print(json.dumps({'ok': True}), flush=True)
                return
            else:
                out = {'error': f'unknown command {cmd!r}'}
        except Exception as e:  # noqa: BLE001 (answered to the Node side, which stops)
            out = {'error': f'{type(e).__name__}: {e}'}
        print(json.dumps(out), flush=True)


if __name__ == '__main__':
    main()
