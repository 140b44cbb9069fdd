"""The PyTorch side of bench/overhead.ts: the same small calls through PyTorch's Python front end.

bench/overhead.ts starts this once and keeps it running, so that its rounds and ours interleave
on the same machine at the same moments. The protocol is one JSON object per line:

  stdin:  {"row": "<name>", "n": <calls>}     run one row, n calls timed (after a short warm-up)
  stdout: {"row": "<name>", "us": <us per call>}  or  {"row": "<name>", "error": "<message>"}

The first line written is {"ready": true, "torch": "<version>", "threads": <n>} (or
{"ready": false, "error": ...} when torch cannot be imported). The process ends at end of input.
Standalone, `python3 python/bench_overhead.py --once` prints every row once (a quick check).

Rows (each mirrors the dualroute call of the same name in bench/overhead.ts):
  add            torch.add(x, 1) on 16 float32, x without grad; the result freed (refcount)
  add_grad       the same with x.requires_grad: the op is recorded on the autograd graph
  fwd_bwd        y = (x * 2 + 1).sum(); y.backward() on 16 floats (one step: 3 ops + backward)
  matmul         [1, 128] @ [128, 128]
  softmax        softmax over the last axis of [1, 128]
  rms_norm       RMSNorm of [1, 128] with a weight; torch 1.13 has no fused one, so the form
                 models write: x * rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w (5 calls)
  layer_norm     F.layer_norm of [1, 128] with weight and bias (one fused op, as ours)
  narrow         x.narrow(1, 0, 64) on [1, 128] (a view)
  reshape        x.reshape(128) on [1, 128] (a view)
"""
import json
import sys
import time


def make_rows(torch):
    F = torch.nn.functional
    x16 = torch.ones(16)
    g16 = torch.ones(16, requires_grad=True)
    v = torch.randn(1, 128)
    w = torch.randn(128, 128)
    gw = torch.ones(128)
    gb = torch.zeros(128)

    def add(n):
        x = x16
        t0 = time.perf_counter()
        for _ in range(n):
            torch.add(x, 1)
        return time.perf_counter() - t0

    def add_grad(n):
        x = g16
        t0 = time.perf_counter()
        for _ in range(n):
            torch.add(x, 1)
        return time.perf_counter() - t0

    def fwd_bwd(n):
        x = g16
        t0 = time.perf_counter()
        for _ in range(n):
            y = (x * 2 + 1).sum()
            y.backward()
        el = time.perf_counter() - t0
        x.grad = None
        return el

    def matmul(n):
        t0 = time.perf_counter()
        for _ in range(n):
            torch.matmul(v, w)
        return time.perf_counter() - t0

    def softmax(n):
        t0 = time.perf_counter()
        for _ in range(n):
            torch.softmax(v, -1)
        return time.perf_counter() - t0

    def rms_norm(n):
        t0 = time.perf_counter()
        for _ in range(n):
            v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-6) * gw
        return time.perf_counter() - t0

    def layer_norm(n):
        t0 = time.perf_counter()
        for _ in range(n):
            F.layer_norm(v, (128,), gw, gb, 1e-5)
        return time.perf_counter() - t0

    def narrow(n):
        t0 = time.perf_counter()
        for _ in range(n):
            v.narrow(1, 0, 64)
        return time.perf_counter() - t0

    def reshape(n):
        t0 = time.perf_counter()
        for _ in range(n):
            v.reshape(128)
        return time.perf_counter() - t0

    return {
        'add': add,
        'add_grad': add_grad,
        'fwd_bwd': fwd_bwd,
        'matmul': matmul,
        'softmax': softmax,
        'rms_norm': rms_norm,
        'layer_norm': layer_norm,
        'narrow': narrow,
        'reshape': reshape,
    }


def send(obj):
    sys.stdout.write(json.dumps(obj) + '\n')
    sys.stdout.flush()


def main():
    try:
        import torch
    except Exception as e:  # noqa: BLE001 - any failure to import means no torch column
        send({'ready': False, 'error': f'{type(e).__name__}: {e}'})
        return
    torch.set_num_threads(2)
    rows = make_rows(torch)
    for f in rows.values():  # warm-up: first calls allocate, load kernels
        f(200)
    if '--once' in sys.argv[1:]:
        for name, f in rows.items():
            print(f'{name:12s} {f(2000) / 2000 * 1e6:8.2f} us')
        return
    send({'ready': True, 'torch': torch.__version__, 'threads': torch.get_num_threads()})
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        req = None
        try:
            req = json.loads(line)
            name = req['row']
            n = int(req['n'])
            f = rows[name]
            f(max(1, n // 20))  # warm this row again after the other side ran
            send({'row': name, 'us': f(n) / n * 1e6})
        except Exception as e:  # noqa: BLE001 - report and keep serving
            send({'row': req.get('row') if isinstance(req, dict) else None, 'error': f'{type(e).__name__}: {e}'})


if __name__ == '__main__':
    main()
