"""The PyTorch side of the parity tests (test/models/twin.test.ts): for each case of a job file,
load a checkpoint written by dualroute, run the twin on the same inputs, and write its logits,
losses and parameter gradients for the Node side to compare.

  python3 python/parity.py JOB.json

JOB.json: [{"model": ckpt, "inputs": st, "out": st, "dtype": "float32" | "float64",
            "mode": "train" | "eval", "classifier": {"classes": n, "pooling": "mean" | "last"}?}]
inputs: ids, targets (DualRouteLM), src, tgt, targets (DualRouteSeq2Seq), ids, labels (classifier).
out: logits, loss, lmLoss (LM), grad.<name> for every parameter, kept (seq2seq), routed.<layer>.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dualroute_twin import DualRouteClassifier, DualRouteLM, DualRouteSeq2Seq, safetensors_io  # noqa: E402
from dualroute_twin.models import _to_dualroute_names, load_model  # noqa: E402


def run_case(case):
    dtype = torch.float64 if case.get('dtype') == 'float64' else torch.float32
    inputs, _ = safetensors_io.load(case['inputs'])
    cls = case.get('classifier')
    if cls:
        tensors, meta = safetensors_io.load(case['model'])
        saved = json.loads(meta['dualroute'])['config']
        backbone = DualRouteLM(saved['config']) if saved['model'] == 'DualRouteLM' else DualRouteSeq2Seq(saved['config'])
        model = DualRouteClassifier(backbone, cls['classes'], cls['pooling'])
        model.load_dualroute_state_dict({k[len('model.'):]: v for k, v in tensors.items() if k.startswith('model.')})
    else:
        model = load_model(case['model'])
    model = model.to(dtype)
    model.train(case.get('mode') == 'train')
    out = {}
    if cls:
        logits = model(inputs['ids'])
        loss = F.cross_entropy(logits, inputs['labels'].long())
    elif isinstance(model, DualRouteLM):
        loss, lm, logits = model.loss(inputs['ids'], inputs['targets'], return_logits=True)
        out['lmLoss'] = lm.detach().reshape(1)
        for i, r in enumerate(model.routing()):
            if r['routed'] is not None:
                out[f'routed.{i}'] = torch.tensor([r['routed']], dtype=torch.float64)
    else:
        logits = model(inputs['src'], inputs['tgt'])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), inputs['targets'].reshape(-1).long(), ignore_index=-100)
        out['kept'] = model.kept.to(torch.int32)
    model.zero_grad(set_to_none=True)
    loss.backward()
    out['logits'] = logits.detach()
    out['loss'] = loss.detach().reshape(1)
    for name, p in _to_dualroute_names(dict(model.named_parameters())).items():
        if p.grad is not None:
            out['grad.' + name] = p.grad.detach()
    safetensors_io.save(case['out'], {k: v.contiguous() for k, v in out.items()})


def main():
    if len(sys.argv) != 2:
        sys.exit('usage: python3 python/parity.py JOB.json')
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    with open(sys.argv[1]) as f:
        job = json.load(f)
    t0 = time.time()
    for case in job:
        run_case(case)
    print(json.dumps({'cases': len(job), 'seconds': round(time.time() - t0, 2), 'torch': torch.__version__}))


if __name__ == '__main__':
    main()
