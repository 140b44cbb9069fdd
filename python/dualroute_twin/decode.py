"""Token-by-token decoding of the twin's DualRouteLM with per-layer key/value caches, written from
the definitions the attention ops document (see layers.py's head), not from dualroute's kernels:

  the new token sits at position p (the tokens fed so far); its query sees, of the cached keys,
  global:  every j <= p
  sliding: p - window < j <= p
  block:   the j <= p of its own block of `window` positions
so a decode step is one query row against a slice of the cache: no mask is needed.

Covered: layers whose local path is 'window' (sliding or block) or 'none' and whose global path
is 'full' or 'none', with any fusion and a SwiGLU, GELU or MoE feed-forward block. Other paths
(conv, lstm, segment, routed, nsa) raise NotImplementedError: generate() recomputes for them.

  cache = DecodeCache(model, batch=1)
  logits = cache.step([token])        # [batch, vocab] at the next position
"""
import math

import torch

from .layers import MultiheadAttention


def _rope_table(max_seq, head_dim, base, dtype):
    """cos, sin [max_seq, head_dim / 2] of every position, computed as layers.rope computes them."""
    half = head_dim // 2
    inv = base ** (-2.0 * torch.arange(half, dtype=torch.float64) / head_dim)
    th = torch.arange(max_seq, dtype=torch.float64)[:, None] * inv[None, :]
    return th.cos().to(dtype), th.sin().to(dtype)


class _AttnCache:
    """Every key and value so far of one attention, [B, Hk, maxSeq, hd] buffers filled up to the position."""

    def __init__(self, attn, batch, max_seq, dtype):
        if attn.cross or attn.kind == 'segment':
            raise NotImplementedError(f"DecodeCache: no decode step for a {'cross' if attn.cross else attn.kind} attention")
        self.attn = attn
        hk, hd = attn.n_kv_heads, attn.head_dim
        self.k = torch.zeros(batch, hk, max_seq, hd, dtype=dtype)
        self.v = torch.zeros(batch, hk, max_seq, hd, dtype=dtype)
        self.scale = 1.0 / math.sqrt(hd)
        self.rope = _rope_table(max_seq, hd, attn.rope_base, dtype) if attn.use_rope else None

    def _rotate(self, x, p):
        cos, sin = self.rope[0][p], self.rope[1][p]
        half = x.shape[-1] // 2
        a, c = x[..., :half], x[..., half:]
        return torch.cat([a * cos - c * sin, c * cos + a * sin], dim=-1)

    def step(self, a, p):
        """a [B, 1, d]: the attention's output for the token at position p, [B, 1, d]."""
        at = self.attn
        b = a.shape[0]
        h, hk, hd = at.n_heads, at.n_kv_heads, at.head_dim
        g = h // hk
        q = at.q_proj(a).reshape(b, hk, g, hd)  # heads kv*G + j share kv head kv (as repeat_interleave)
        k = at.k_proj(a).reshape(b, hk, hd)
        v = at.v_proj(a).reshape(b, hk, hd)
        if self.rope is not None:
            q, k = self._rotate(q, p), self._rotate(k, p)
        self.k[:, :, p] = k
        self.v[:, :, p] = v
        if at.kind == 'global':
            lo = 0
        elif at.mode == 'sliding':
            lo = max(0, p - at.window + 1)
        else:  # block
            lo = (p // at.window) * at.window
        keys, vals = self.k[:, :, lo:p + 1], self.v[:, :, lo:p + 1]  # [B, Hk, n, hd]
        s = torch.matmul(q, keys.transpose(-1, -2)) * self.scale  # [B, Hk, G, n]
        o = torch.matmul(torch.softmax(s, -1), vals)  # [B, Hk, G, hd]
        return at.o_proj(o.reshape(b, 1, h * hd))


class DecodeCache:
    """The per-layer caches of one decode of `batch` rows (one token per row per step)."""

    def __init__(self, model, batch=1):
        self.model, self.batch = model, batch
        self.position = 0
        c = model.config
        dtype = model.embed_tokens.weight.dtype
        self.paths = []
        for layer in model.layers:
            paths = []
            for p in (layer.local, layer.glob):
                if p is None:
                    paths.append(None)
                elif isinstance(p, MultiheadAttention):
                    paths.append(_AttnCache(p, batch, c['maxSeq'], dtype))
                else:
                    raise NotImplementedError(f'DecodeCache: no decode step for {type(p).__name__}')
            if layer.encoder_attn is not None:
                raise NotImplementedError('DecodeCache: no decode step for a decoder layer with cross-attention')
            self.paths.append(paths)

    @torch.no_grad()
    def step(self, ids):
        """Feeds one token per row (ids: a list of `batch` ints) at the next position; returns the
        logits of that position, [batch, vocab]."""
        m, p = self.model, self.position
        if p >= m.config['maxSeq']:
            raise ValueError(f"DecodeCache.step: the model's maxSeq ({m.config['maxSeq']}) positions are used up")
        t = torch.tensor(ids, dtype=torch.long).reshape(self.batch, 1)
        x = m.embed_tokens(t)
        for layer, (lc, gc) in zip(m.layers, self.paths):
            a = layer.input_layernorm(x)
            l = lc.step(a, p) if lc is not None else None
            g = gc.step(a, p) if gc is not None else None
            mixed = layer.fuse(l, g, a, t) if l is not None and g is not None else (l if l is not None else g)
            h = x + mixed
            x = h + layer.mlp(layer.post_attention_layernorm(h))
        n = m.norm(x)
        logits = m.lm_head(n) if m.lm_head is not None else n @ m.embed_tokens.weight.t()
        self.position = p + 1
        return logits.reshape(self.batch, -1)


@torch.no_grad()
def generate_cached(model, prompt, max_tokens):
    """Greedy tokens after prompt (a list of ids) through a DecodeCache: the prompt fed one token
    per step, then each drawn token (the last one drawn is not fed)."""
    was = model.training
    model.eval()
    try:
        cache = DecodeCache(model, 1)
        n = model.config['maxSeq']
        logits = None
        for tok in prompt:
            logits = cache.step([tok])
        out = []
        for i in range(max_tokens):
            if len(prompt) + len(out) >= n:
                break
            nxt = int(logits[0].argmax())
            out.append(nxt)
            if i + 1 < max_tokens and len(prompt) + len(out) < n:
                logits = cache.step([nxt])
        return out
    finally:
        model.train(was)
