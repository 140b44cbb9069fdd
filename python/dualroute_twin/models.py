"""DualRouteLM, DualRouteSeq2Seq and DualRouteClassifier in PyTorch, with dualroute's parameter
names (docs/weights.md), so that one safetensors checkpoint serves both.

  a = norm(x);  l = local(a);  g = global(a);  h = x + fuse(l, g | a, ids)
  out = h + ffn(norm(h))
"""
import json
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import safetensors_io
from .config import resolve_config, resolve_seq2seq_config
from .layers import (ConvPath, LSTMPath, MLP, MultiheadAttention, NSAAttention, RMSNorm, RoutedAttention,
                     RuleRouter, SigmoidGates, SoftmaxGates, TokenChoiceMoE, layer_drop, mix_paths)


class DualRouteLayer(nn.Module):
    def __init__(self, c, spec, causal=True, cross=False):
        super().__init__()
        d = c['dModel']
        self.c, self.spec = c, spec
        attn = dict(n_kv_heads=c['nKvHeads'], use_rope=c['rope'], rope_base=c['ropeBase'])
        self.input_layernorm = RMSNorm(d, c['normEps'])
        self.post_attention_layernorm = RMSNorm(d, c['normEps'])
        local, glob = spec['local'], spec['global']
        if local == 'window':
            self.local = MultiheadAttention(d, c['nHeads'], kind='local', causal=causal, window=spec['window'],
                                            mode=spec['windowMode'], **attn)
        elif local == 'conv':
            self.local = ConvPath(d, spec['convKernel'], causal=causal)
        elif local == 'lstm':
            self.local = LSTMPath(d)
        else:
            self.local = None
        if glob == 'full':
            self.glob = MultiheadAttention(d, c['nHeads'], causal=causal, **attn)
        elif glob == 'segment':
            self.glob = MultiheadAttention(d, c['nHeads'], kind='segment', causal=causal, segment=spec['segment'],
                                           top_k=spec['topK'], **attn)
        elif glob == 'routed':
            self.glob = RoutedAttention(d, c['nHeads'], c['nKvHeads'], spec['capacity'], c['rope'], c['ropeBase'])
        elif glob == 'nsa':
            self.glob = NSAAttention(d, c['nHeads'], c['nKvHeads'], spec['segment'], spec['topK'], spec['window'],
                                     c['rope'], c['ropeBase'])
        else:
            self.glob = None
        self.gate = None
        self.fusion = spec['fusion']
        if self.local is not None and self.glob is not None:
            units = d if spec['gateUnits'] == 'channel' else 1
            f = self.fusion
            if f == 'gated':
                self.gate = SigmoidGates(d, 2, units)
            elif f == 'softmax':
                self.gate = SoftmaxGates(d, 2, units)
            elif f == 'attention':
                self.gate = nn.Linear(d, 1)
            elif f == 'concat':
                self.gate = nn.Linear(2 * d, d, bias=False)
            elif f == 'rule':
                self.gate = RuleRouter(spec['rules'], 2, spec['ruleDefault'], c['vocabSize'])
        if c['ffn'] == 'moe':
            m = c['moe']
            self.mlp = TokenChoiceMoE(d, c['ffnHidden'], m['experts'], m['topK'], m['capacityFactor'], m['score'],
                                      aux_loss_weight=m['auxLossWeight'], z_loss_weight=m['zLossWeight'])
        else:
            self.mlp = MLP(d, c['ffnHidden'], c['ffn'])
        self.dropout = nn.Dropout(c['dropout'])
        self.cross_attn_layernorm = RMSNorm(d, c['normEps']) if cross else None
        self.encoder_attn = MultiheadAttention(d, c['nHeads'], c['nKvHeads'], causal=False, d_context=d) if cross else None
        self.last_gates = None

    # the global path is `global` in dualroute's names; a Python keyword, so stored as glob and renamed
    # in state_dict() / load_state_dict() by the model (see _to_dualroute_names)

    def fuse(self, l, g, a, ids):
        f = self.fusion
        if f == 'sum':
            self.last_gates = None
            return l + g
        if f in ('gated', 'softmax'):
            gates = self.gate(a)
        elif f == 'attention':
            gates = torch.softmax(torch.cat([self.gate(l), self.gate(g)], -1), -1)
        elif f == 'concat':
            return self.gate(torch.cat([l, g], -1))
        elif f == 'rule':
            gates = self.gate(ids, l.dtype)
        else:  # random: a path per token drawn in training, the expectation in eval
            p0, p1 = self.spec['randomProbs']
            if self.training:
                pick = (torch.rand(l.shape[:-1], device=l.device) >= p0).long()
                gates = F.one_hot(pick, 2).to(l.dtype)
            else:
                gates = torch.tensor([p0, p1], dtype=l.dtype, device=l.device).expand(*l.shape[:-1], 2)
        self.last_gates = gates.detach()
        return mix_paths([l, g], gates)

    def forward(self, x, ids, context=None):
        a = self.input_layernorm(x)
        l = self.local(a) if self.local is not None else None
        g = self.glob(a) if self.glob is not None else None
        mixed = self.fuse(l, g, a, ids) if l is not None and g is not None else (l if l is not None else g)
        p = self.c['layerDrop']

        def drop(t):
            return layer_drop(self.dropout(t), p, self.training)

        h = x + drop(mixed)
        if self.encoder_attn is not None:
            h = h + drop(self.encoder_attn(self.cross_attn_layernorm(h), context))
        return h + drop(self.mlp(self.post_attention_layernorm(h)))

    def routing(self):
        """Mean gate per path, expert load, routed fraction (as dualroute's model.routing())."""
        gates = None
        if self.last_gates is not None:
            gt = self.last_gates
            gates = (gt.mean(dim=(0, 1, 3)) if gt.dim() == 4 else gt.reshape(-1, 2).mean(0)).tolist()
        elif self.local is not None and self.glob is not None and self.fusion == 'sum':
            gates = [1.0, 1.0]
        load = self.mlp.counts.tolist() if isinstance(self.mlp, TokenChoiceMoE) and self.mlp.counts is not None else None
        routed = self.glob.routed_fraction if isinstance(self.glob, RoutedAttention) else None
        return {'gates': gates, 'expertLoad': load, 'routed': routed}


def _to_dualroute_names(state):
    # '.glob.' is this module's attribute for the global path, 'global' in dualroute's names
    return {k.replace('.glob.', '.global.'): v for k, v in state.items()}


def _from_dualroute_names(state):
    return {k.replace('.global.', '.glob.'): v for k, v in state.items()}


class _Named(nn.Module):
    """state_dict / load_state_dict in dualroute's names."""

    def dualroute_state_dict(self):
        return _to_dualroute_names({k: v for k, v in self.state_dict().items()})

    def load_dualroute_state_dict(self, state, strict=True):
        state = _from_dualroute_names(state)
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and (missing or unexpected):
            names = lambda ks: ', '.join(sorted(_to_dualroute_names(dict.fromkeys(ks)))[:8]) or 'none'
            raise ValueError(f'load: the checkpoint does not fit the model: missing {names(missing)}; unexpected {names(unexpected)}')
        for k, v in state.items():
            if k in own and tuple(own[k].shape) != tuple(v.shape):
                raise ValueError(f"load: '{k}' has shape {list(v.shape)} in the checkpoint but {list(own[k].shape)} in the model")
        with torch.no_grad():
            for k, v in state.items():
                if k in own:
                    own[k].copy_(v.to(own[k].dtype))


class DualRouteLM(_Named):
    kind = 'DualRouteLM'

    def __init__(self, config):
        super().__init__()
        self.source = json.loads(json.dumps(config))
        c = self.config = resolve_config(config)
        torch.manual_seed(c['seed'])
        self.embed_tokens = nn.Embedding(c['vocabSize'], c['dModel'])
        if c['tieEmbeddings']:
            with torch.no_grad():
                self.embed_tokens.weight.mul_(1 / math.sqrt(c['dModel']))
        self.layers = nn.ModuleList([DualRouteLayer(c, spec) for spec in c['layers']])
        self.norm = RMSNorm(c['dModel'], c['normEps'])
        self.lm_head = None if c['tieEmbeddings'] else nn.Linear(c['dModel'], c['vocabSize'], bias=False)

    def hidden(self, ids):
        if ids.dim() != 2:
            raise ValueError(f'DualRouteLM: Expected ids of shape [batch, seq] but received shape {list(ids.shape)}')
        if ids.shape[1] > self.config['maxSeq']:
            raise ValueError(f"DualRouteLM: Expected at most maxSeq ({self.config['maxSeq']}) positions but received {ids.shape[1]}")
        h = self.embed_tokens(ids.long())
        for layer in self.layers:
            h = layer(h, ids)
        return self.norm(h)

    def forward(self, ids):
        n = self.hidden(ids)
        return self.lm_head(n) if self.lm_head is not None else n @ self.embed_tokens.weight.t()

    def loss(self, ids, targets, return_logits=False):
        """(total loss: next-token cross-entropy + MoE auxiliary losses + routed predictors' losses,
        LM loss[, logits])."""
        logits = self.forward(ids)
        lm = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float() if logits.dtype == torch.bfloat16 else
                             logits.reshape(-1, logits.shape[-1]), targets.reshape(-1).long(), ignore_index=-100)
        total = lm
        for layer in self.layers:
            if isinstance(layer.mlp, TokenChoiceMoE):
                total = total + layer.mlp.aux
            if isinstance(layer.glob, RoutedAttention) and layer.glob.predictor_loss is not None:
                total = total + layer.glob.predictor_loss
        return (total, lm, logits) if return_logits else (total, lm)

    def routing(self):
        return [layer.routing() for layer in self.layers]

    @torch.no_grad()
    def generate(self, prompt, max_tokens, temperature=0.0, generator=None):
        """Tokens after prompt (a list of ids), greedy at temperature 0, by recomputing the prefix."""
        was = self.training
        self.eval()
        ids = list(prompt)
        out = []
        for _ in range(max_tokens):
            x = torch.tensor([ids[-self.config['maxSeq']:]], dtype=torch.long)
            logits = self.forward(x)[0, -1].float()
            if temperature > 0:
                nxt = int(torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator))
            else:
                nxt = int(logits.argmax())
            ids.append(nxt)
            out.append(nxt)
        self.train(was)
        return out


class DualRouteSeq2Seq(_Named):
    kind = 'DualRouteSeq2Seq'

    def __init__(self, config):
        super().__init__()
        self.source = json.loads(json.dumps(config))
        enc, dec, keep = resolve_seq2seq_config(config)
        self.encoder_config, self.decoder_config, self.keep = enc, dec, keep
        torch.manual_seed(enc['seed'])
        d = enc['dModel']
        self.embed_tokens = nn.Embedding(enc['vocabSize'], d)
        with torch.no_grad():
            self.embed_tokens.weight.mul_(1 / math.sqrt(d))
        self.encoder = nn.ModuleList([DualRouteLayer(enc, s, causal=False) for s in enc['layers']])
        self.encoder_norm = RMSNorm(d, enc['normEps'])
        self.encoder_router = nn.Linear(d, 1)
        self.decoder = nn.ModuleList([DualRouteLayer(dec, s, cross=True) for s in dec['layers']])
        self.norm = RMSNorm(d, enc['normEps'])
        self.kept = None

    def encode(self, src):
        h = self.embed_tokens(src.long())
        for layer in self.encoder:
            h = layer(h, src)
        return self.encoder_norm(h)

    def route(self, enc):
        """The top ceil(keep * Se) encoder states by the router's score, in source order, scaled by sigmoid(score)."""
        b, se, d = enc.shape
        score = self.encoder_router(enc).squeeze(-1)
        n = max(1, math.ceil(self.keep * se))
        kept = torch.sort(torch.topk(score.detach(), n, dim=1).indices, dim=1).values
        self.kept = kept
        w = torch.sigmoid(score.gather(1, kept))
        return enc.gather(1, kept[..., None].expand(b, n, d)) * w[..., None]

    def forward(self, src, tgt):
        ctx = self.route(self.encode(src))
        h = self.embed_tokens(tgt.long())
        for layer in self.decoder:
            h = layer(h, tgt, ctx)
        return self.norm(h) @ self.embed_tokens.weight.t()

    def loss(self, src, tgt, targets):
        logits = self.forward(src, tgt)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1).long(), ignore_index=-100)


class DualRouteClassifier(_Named):
    """A classification head (mean or last-token pooling) over a backbone's final hidden states."""
    kind = 'DualRouteClassifier'

    def __init__(self, backbone, num_classes, pooling='mean'):
        super().__init__()
        if pooling not in ('mean', 'last'):
            raise ValueError(f"DualRouteClassifier: Expected 'mean' or 'last' for pooling but received {pooling!r}")
        self.backbone, self.pooling = backbone, pooling
        d = backbone.config['dModel'] if isinstance(backbone, DualRouteLM) else backbone.encoder_config['dModel']
        self.head = nn.Linear(d, num_classes)

    def forward(self, ids):
        h = self.backbone.hidden(ids) if isinstance(self.backbone, DualRouteLM) else self.backbone.encode(ids)
        return self.head(h.mean(1) if self.pooling == 'mean' else h[:, -1])


# ---- checkpoints -----------------------------------------------------------------------------

MODEL_KINDS = {'DualRouteLM': DualRouteLM, 'DualRouteSeq2Seq': DualRouteSeq2Seq}


def _meta(path, meta):
    try:
        m = json.loads(meta.get('dualroute', '{}'))
    except json.JSONDecodeError:
        raise ValueError(f"{path}: the checkpoint's dualroute metadata is not JSON") from None
    return m


def load_model(path):
    """A model saved by dualroute's saveModel (or by save_model here): kind and config from the
    metadata, weights from the 'model.' tensors (bfloat16 ones become float32)."""
    tensors, meta = safetensors_io.load(path)
    m = _meta(path, meta)
    s = m.get('config') or {}
    kind = s.get('model')
    if kind not in MODEL_KINDS:
        raise ValueError(f'{path}: Expected a checkpoint written by saveModel (metadata naming DualRouteLM or DualRouteSeq2Seq) but found {kind!r}')
    model = MODEL_KINDS[kind](s['config'])
    state = {k[len('model.'):]: v for k, v in tensors.items() if k.startswith('model.')}
    model.load_dualroute_state_dict({k: v.float() if v.dtype == torch.bfloat16 else v for k, v in state.items()})
    return model


def save_model(path, model, step=0):
    """Writes model in dualroute's checkpoint layout (loadModel in Node reads it), atomically."""
    if not isinstance(model, tuple(MODEL_KINDS.values())):
        raise ValueError(f'save_model: Expected a DualRouteLM or DualRouteSeq2Seq but received {type(model).__name__}')
    tensors = {'model.' + k: v.detach().float() if v.dtype == torch.float64 else v.detach()
               for k, v in model.dualroute_state_dict().items()}
    meta = {'format': 1, 'step': int(step), 'generators': {}, 'config': {'model': model.kind, 'config': model.source}}
    safetensors_io.save(path, tensors, {'dualroute': json.dumps(meta)})
