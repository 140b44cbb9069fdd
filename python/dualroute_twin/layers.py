"""The layers of the dualroute models in plain PyTorch (what torch 1.13 offers: no fused
attention, so every attention is scores, a boolean visibility mask and a softmax).

Each function is written from the definition the dualroute op documents (lib/ops/*.ts), not from
its kernel, so that the parity tests compare two independent implementations:

  attention rows: query row i sits at position p = i + Sk - Sq (a decode step is the same call)
  global:  key j visible when j <= p (causal) or always
  sliding: p - window < j <= p (causal) or |p - j| < window
  block:   j and p in the same block of `window` positions (and j <= p when causal)
  segment: keys fall into ceil(Sk / segment) segments; a query scores each by q . mean(keys),
           keeps its own segment (causal) and its best others up to topK (ties to the lower
           index), segments starting after p never, and attends over the kept segments' keys
  compressed: attention over the segment means, a segment visible once it ends at or before p
A row that sees no key gives 0.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


# ---- attention -------------------------------------------------------------------------------

def _positions(sq, sk, device):
    return torch.arange(sq, device=device) + (sk - sq)


def visibility(kind, sq, sk, causal, window=0, device=None):
    """bool [Sq, Sk]: which keys each query row sees ('global', 'sliding' or 'block')."""
    p = _positions(sq, sk, device)[:, None]
    j = torch.arange(sk, device=device)[None, :]
    if kind == 'global':
        return j <= p if causal else torch.ones(sq, sk, dtype=torch.bool, device=device)
    if kind == 'sliding':
        return (j <= p) & (j > p - window) if causal else (p - j).abs() < window
    if kind == 'block':
        same = torch.div(j, window, rounding_mode='floor') == torch.div(p, window, rounding_mode='floor')
        return same & (j <= p) if causal else same
    raise ValueError(f'visibility: unknown kind {kind!r}')


def _expand_kv(t, n_heads):
    g = n_heads // t.shape[1]
    return t if g == 1 else t.repeat_interleave(g, dim=1)


def masked_attention(q, k, v, mask):
    """softmax(q k^T / sqrt(D) over visible keys) v; q [B, H, Sq, D], k, v [B, Hk, Sk, D] (Hk divides
    H: grouped-query heads), mask bool broadcastable to [B, H, Sq, Sk]. Rows with no visible key give 0."""
    h = q.shape[1]
    k, v = _expand_kv(k, h), _expand_kv(v, h)
    s = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    mask = mask.expand(s.shape)
    seen = mask.any(-1, keepdim=True)
    s = s.masked_fill(~mask, float('-inf')).masked_fill(~seen, 0.0)
    return torch.matmul(torch.softmax(s, -1) * seen, v)


def segment_means(x, segment):
    """[..., S, D] -> [..., ceil(S / segment), D]: the mean of each segment (the last may be short)."""
    s = x.shape[-2]
    n = -(-s // segment)
    pad = n * segment - s
    xp = F.pad(x, (0, 0, 0, pad)) if pad else x
    sums = xp.reshape(*x.shape[:-2], n, segment, x.shape[-1]).sum(-2)
    counts = torch.full((n,), float(segment), dtype=x.dtype, device=x.device)
    counts[-1] = s - (n - 1) * segment
    return sums / counts[:, None]


def select_segments(q, k, segment, top_k, causal=True, group_heads=False):
    """bool [B, H, Sq, nseg]: the segments each query row keeps (not differentiable)."""
    with torch.no_grad():
        b, h, sq, _ = q.shape
        hk, sk = k.shape[1], k.shape[2]
        n = -(-sk // segment)
        kbar = _expand_kv(segment_means(k, segment), h)
        sc = torch.matmul(q, kbar.transpose(-1, -2))  # [B, H, Sq, nseg]; the scale changes no order
        if group_heads:
            g = h // hk
            sc = sc.reshape(b, hk, g, sq, n).sum(2, keepdim=True).expand(b, hk, g, sq, n).reshape(b, h, sq, n)
        p = _positions(sq, sk, q.device)
        s_idx = torch.arange(n, device=q.device)
        key = sc.clone()
        if causal:
            own = torch.div(p, segment, rounding_mode='floor')
            key = key.masked_fill((s_idx[None, :] * segment > p[:, None]).expand_as(key), float('-inf'))
            key = key.masked_fill((s_idx[None, :] == own[:, None]).expand_as(key), float('inf'))
        # larger first, ties to the lower index (a stable sort)
        order = torch.sort(key, dim=-1, descending=True, stable=True).indices[..., :min(top_k, n)]
        kept = torch.zeros_like(key, dtype=torch.bool).scatter_(-1, order, True)
        return kept & (key != float('-inf'))


def segment_attention(q, k, v, segment, top_k, causal=True, group_heads=False):
    """Token attention over the keys of each query's kept segments (select_segments)."""
    sq, sk = q.shape[2], k.shape[2]
    kept = select_segments(q, k, segment, top_k, causal, group_heads)
    mask = kept.repeat_interleave(segment, dim=-1)[..., :sk]
    if causal:
        mask = mask & visibility('global', sq, sk, True, device=q.device)
    return masked_attention(q, k, v, mask)


def compressed_attention(q, k, v, segment, causal=True):
    """Attention over the segment means of k and v (differentiable through both means)."""
    sq, sk = q.shape[2], k.shape[2]
    kb, vb = segment_means(k, segment), segment_means(v, segment)
    n = kb.shape[2]
    if causal:
        p = _positions(sq, sk, q.device)
        mask = (torch.arange(n, device=q.device)[None, :] + 1) * segment - 1 <= p[:, None]
    else:
        mask = torch.ones(sq, n, dtype=torch.bool, device=q.device)
    return masked_attention(q, kb, vb, mask)


def rope(x, positions, base=10000.0):
    """Rotate-half rotary embedding of x [B, H, S, D] at integer positions [S] (as Llama)."""
    d = x.shape[-1]
    half = d // 2
    inv = base ** (-2.0 * torch.arange(half, dtype=torch.float64, device=x.device) / d)
    th = positions.to(torch.float64)[:, None] * inv[None, :]
    cos, sin = th.cos().to(x.dtype), th.sin().to(x.dtype)
    a, c = x[..., :half], x[..., half:]
    return torch.cat([a * cos - c * sin, c * cos + a * sin], dim=-1)


# ---- modules ---------------------------------------------------------------------------------

class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class MultiheadAttention(nn.Module):
    """q/k/v/o projections (Llama's names), grouped-query heads, RoPE, and a global, local
    ('sliding' / 'block') or segment mask; cross-attention when d_context is given."""

    def __init__(self, d_model, n_heads, n_kv_heads=None, kind='global', causal=True, window=0, mode='sliding',
                 segment=0, top_k=0, group_heads=False, use_rope=True, rope_base=10000.0, d_context=None):
        super().__init__()
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads or n_heads
        self.head_dim = d_model // n_heads
        self.kind, self.causal, self.window, self.mode = kind, causal, window, mode
        self.segment, self.top_k, self.group_heads = segment, top_k, group_heads
        self.cross = d_context is not None
        self.use_rope = use_rope and not self.cross
        self.rope_base = rope_base
        dc = d_context if self.cross else d_model
        hd = self.head_dim
        self.q_proj = nn.Linear(d_model, n_heads * hd, bias=False)
        self.k_proj = nn.Linear(dc, self.n_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(dc, self.n_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(n_heads * hd, d_model, bias=False)

    def _heads(self, t, h):
        b, s, _ = t.shape
        return t.reshape(b, s, h, self.head_dim).transpose(1, 2)

    def forward(self, x, context=None):
        b, s, _ = x.shape
        src = context if self.cross else x
        q = self._heads(self.q_proj(x), self.n_heads)
        k = self._heads(self.k_proj(src), self.n_kv_heads)
        v = self._heads(self.v_proj(src), self.n_kv_heads)
        if self.use_rope:
            pos = torch.arange(s, device=x.device)
            q, k = rope(q, pos, self.rope_base), rope(k, pos, self.rope_base)
        sq, sk = q.shape[2], k.shape[2]
        if self.kind == 'segment':
            a = segment_attention(q, k, v, self.segment, self.top_k, self.causal, self.group_heads)
        else:
            kind = 'global' if self.kind == 'global' else self.mode
            a = masked_attention(q, k, v, visibility(kind, sq, sk, self.causal, self.window, x.device))
        return self.o_proj(a.transpose(1, 2).reshape(b, sq, self.n_heads * self.head_dim))


def mix_paths(paths, gates):
    """sum_p gates_p * paths[p]; gates [..., P] (per token) or [..., P, D] (per channel)."""
    if gates.dim() == paths[0].dim() + 1:
        return sum(gates[..., i, :] * p for i, p in enumerate(paths))
    return sum(gates[..., i:i + 1] * p for i, p in enumerate(paths))


class SigmoidGates(nn.Module):
    """An independent sigmoid gate per path, each from its own Linear(d, units)."""

    def __init__(self, d_model, n_paths, units=1):
        super().__init__()
        self.n_paths, self.units = n_paths, units
        self.proj = nn.ModuleList([nn.Linear(d_model, units) for _ in range(n_paths)])

    def forward(self, x):
        g = torch.stack([torch.sigmoid(p(x)) for p in self.proj], dim=-2)  # [..., P, units]
        return g.squeeze(-1) if self.units == 1 else g


class SoftmaxGates(nn.Module):
    """Competing gates: Linear(d, P * units), softmax over the paths."""

    def __init__(self, d_model, n_paths, units=1):
        super().__init__()
        self.n_paths, self.units = n_paths, units
        self.proj = nn.Linear(d_model, n_paths * units)

    def forward(self, x):
        z = self.proj(x)
        if self.units == 1:
            return torch.softmax(z, -1)
        return torch.softmax(z.reshape(*x.shape[:-1], self.n_paths, self.units), -2)


class RuleRouter(nn.Module):
    """One-hot gates from a table of token-id rules ({ids, route} or {range: [lo, hi), route})."""

    def __init__(self, rules, n_paths, default, vocab_size):
        super().__init__()
        table = torch.full((vocab_size,), default, dtype=torch.long)
        for r in rules:
            if 'ids' in r:
                table[torch.tensor(r['ids'], dtype=torch.long)] = r['route']
            else:
                lo, hi = r['range']
                table[lo:hi] = r['route']
        self.n_paths = n_paths
        self.register_buffer('table', table, persistent=False)

    def forward(self, ids, dtype):
        return F.one_hot(self.table[ids.long()], self.n_paths).to(dtype)


class RoutedAttention(nn.Module):
    """Mixture-of-Depths: in training the top ceil(capacity * S) tokens of each sequence by the
    router's score go through causal attention (against every earlier key), scaled by
    sigmoid(score); in eval a causal predictor (logit > 0) decides. The predictor learns the
    router's choice by binary cross-entropy on the detached input."""

    def __init__(self, d_model, n_heads, n_kv_heads, capacity, use_rope=True, rope_base=10000.0):
        super().__init__()
        self.capacity = capacity
        self.router = nn.Linear(d_model, 1)
        self.predictor = nn.Linear(d_model, 1)
        self.attn = MultiheadAttention(d_model, n_heads, n_kv_heads, use_rope=use_rope, rope_base=rope_base)
        self.predictor_loss = None
        self.routed_fraction = None

    def forward(self, x):
        b, s, _ = x.shape
        score = self.router(x).squeeze(-1)
        z = self.predictor(x.detach()).squeeze(-1)
        if self.training:
            n = max(1, math.ceil(self.capacity * s))
            chosen = torch.topk(score.detach(), n, dim=1).indices
            member = torch.zeros(b, s, dtype=torch.bool, device=x.device).scatter_(1, chosen, True)
            self.predictor_loss = F.binary_cross_entropy_with_logits(z, member.to(z.dtype))
        else:
            member = z > 0
            self.predictor_loss = None
        self.routed_fraction = member.float().mean().item()
        # every row is computed here and the unrouted ones zeroed: the same values and gradients as
        # computing the routed rows alone (dualroute's kernel skips the others)
        w = torch.sigmoid(score) * member.to(score.dtype)
        return self.attn(x) * w.unsqueeze(-1)


class NSAAttention(nn.Module):
    """DeepSeek's Native Sparse Attention branches over shared projections: compressed (segment
    means), selected (topK segments, one selection per kv head), sliding (window), mixed by three
    sigmoid gates per token."""

    def __init__(self, d_model, n_heads, n_kv_heads, segment, top_k, window, use_rope=True, rope_base=10000.0):
        super().__init__()
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        self.segment, self.top_k, self.window = segment, top_k, window
        self.use_rope, self.rope_base = use_rope, rope_base
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)
        self.gate = SigmoidGates(d_model, 3)

    def forward(self, x):
        b, s, d = x.shape

        def heads(t, h):
            return t.reshape(b, s, h, self.head_dim).transpose(1, 2)

        q = heads(self.q_proj(x), self.n_heads)
        k = heads(self.k_proj(x), self.n_kv_heads)
        v = heads(self.v_proj(x), self.n_kv_heads)
        if self.use_rope:
            pos = torch.arange(s, device=x.device)
            q, k = rope(q, pos, self.rope_base), rope(k, pos, self.rope_base)

        def merge(a):
            return a.transpose(1, 2).reshape(b, s, d)

        cmp = merge(compressed_attention(q, k, v, self.segment))
        sel = merge(segment_attention(q, k, v, self.segment, self.top_k, True, group_heads=True))
        win = merge(masked_attention(q, k, v, visibility('sliding', s, s, True, self.window, x.device)))
        return self.o_proj(mix_paths([cmp, sel, win], self.gate(x)))


class Conv1d(nn.Module):
    """Conv1d over channels-last input [B, S, C] with PyTorch's weight layout [out, in / groups, k]:
    causal (left zero padding) or centred (odd kernel)."""

    def __init__(self, c_in, c_out, kernel, groups=1, causal=True):
        super().__init__()
        self.kernel, self.groups, self.causal = kernel, groups, causal
        self.weight = nn.Parameter(torch.empty(c_out, c_in // groups, kernel))
        self.bias = nn.Parameter(torch.empty(c_out))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1 / math.sqrt(c_in // groups * kernel)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x):
        k = self.kernel
        pad = (k - 1, 0) if self.causal else ((k - 1) // 2, (k - 1) // 2)
        y = F.conv1d(F.pad(x.transpose(1, 2), pad), self.weight, self.bias, groups=self.groups)
        return y.transpose(1, 2)


class ConvPath(nn.Module):
    """The conv local path: causal depthwise conv, SiLU, projection."""

    def __init__(self, d, kernel, causal=True):
        super().__init__()
        self.conv = Conv1d(d, d, kernel, groups=d, causal=causal)
        self.proj = nn.Linear(d, d, bias=False)

    def forward(self, x):
        return self.proj(F.silu(self.conv(x)))


class LSTMPath(nn.Module):
    """The LSTM local path: one LSTM layer of width d (PyTorch's own nn.LSTM: the same names and gate order)."""

    def __init__(self, d):
        super().__init__()
        self.lstm = nn.LSTM(d, d, batch_first=True)

    def forward(self, x):
        return self.lstm(x)[0]


class MLP(nn.Module):
    """up then down; swiglu: up holds [gate | up] rows, out = down(silu(gate) * up); gelu: exact."""

    def __init__(self, d, hidden, activation):
        super().__init__()
        self.activation = activation
        self.up = nn.Linear(d, 2 * hidden if activation == 'swiglu' else hidden, bias=False)
        self.down = nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        h = self.up(x)
        if self.activation == 'swiglu':
            g, u = h.chunk(2, dim=-1)
            a = F.silu(g) * u
        else:
            a = F.gelu(h)
        return self.down(a)


class TokenChoiceMoE(nn.Module):
    """Token-choice mixture of experts: router scores (softmax over experts, or sigmoid), the top-k
    experts per token (ties to the lower expert), weights = the chosen scores (divided by their sum
    when normalising: the default for sigmoid), an optional capacity per expert (slots filled by
    first choices of every token in order, then second choices, ...), a SwiGLU or GELU FFN per
    expert, and the weighted sum. auxiliary losses: load balancing E sum_e f_e P_e (f: share of
    first choices, P: mean score) and the z loss mean(logsumexp(logits)^2)."""

    def __init__(self, d, hidden, experts, top_k, capacity_factor=0.0, score='softmax', normalize=None,
                 activation='swiglu', aux_loss_weight=0.01, z_loss_weight=0.001):
        super().__init__()
        self.experts, self.top_k, self.capacity_factor, self.score = experts, top_k, capacity_factor, score
        self.normalize = (score == 'sigmoid') if normalize is None else normalize
        self.activation = activation
        self.aux_loss_weight, self.z_loss_weight = aux_loss_weight, z_loss_weight
        self.router = nn.Linear(d, experts, bias=False)
        f1 = 2 * hidden if activation == 'swiglu' else hidden
        k1, k2 = 1 / math.sqrt(d), 1 / math.sqrt(hidden)
        self.w1 = nn.Parameter(torch.empty(experts, d, f1).uniform_(-k1, k1))
        self.w2 = nn.Parameter(torch.empty(experts, hidden, d).uniform_(-k2, k2))
        self.aux = None
        self.counts = None

    def _ffn(self, x, e):
        h = x @ self.w1[e]
        if self.activation == 'swiglu':
            g, u = h.chunk(2, dim=-1)
            a = F.silu(g) * u
        else:
            a = F.gelu(h)
        return a @ self.w2[e]

    def forward(self, x):
        d = x.shape[-1]
        xf = x.reshape(-1, d)
        t = xf.shape[0]
        e_n, k = self.experts, self.top_k
        stats = torch.float64 if x.dtype == torch.float64 else torch.float32
        logits = self.router(xf).to(stats)
        s = torch.softmax(logits, -1) if self.score == 'softmax' else torch.sigmoid(logits)
        idx = torch.sort(s.detach(), dim=-1, descending=True, stable=True).indices[:, :k]  # [T, K]
        w = s.gather(1, idx)
        if self.normalize:
            w = w / w.sum(-1, keepdim=True)
        keep = torch.ones(t, k, dtype=torch.bool, device=x.device)
        if self.capacity_factor > 0:
            cap = math.ceil(self.capacity_factor * t * k / e_n)
            # slots in the order (choice, token): every first choice before any second one
            flat = idx.t().reshape(-1)
            onehot = F.one_hot(flat, e_n)
            rank = (onehot.cumsum(0) - 1).gather(1, flat[:, None]).squeeze(1)
            keep = (rank < cap).reshape(k, t).t()
        self.counts = torch.bincount(idx[keep], minlength=e_n)
        y = torch.zeros_like(xf)
        for e in range(e_n):
            tok, j = torch.nonzero((idx == e) & keep, as_tuple=True)
            if tok.numel() == 0:
                continue
            out = self._ffn(xf[tok], e) * w[tok, j].to(x.dtype)[:, None]
            y = y.index_add(0, tok, out)
        p = torch.softmax(logits, -1) if self.score == 'softmax' else s / s.sum(-1, keepdim=True)
        f = torch.bincount(idx[:, 0], minlength=e_n).to(stats) / t
        aux = e_n * (f * p.mean(0)).sum()
        z = (torch.logsumexp(logits, -1) ** 2).mean()
        self.aux = self.aux_loss_weight * aux + self.z_loss_weight * z
        return y.reshape(x.shape)


def layer_drop(t, p, training, generator=None):
    """Stochastic depth: each sample (row of dim 0) kept with probability 1 - p and scaled by 1 / (1 - p)."""
    if not training or p == 0:
        return t
    keep = (torch.rand(t.shape[0], generator=generator, device=t.device) >= p).to(t.dtype) / (1 - p)
    return t * keep.reshape(-1, *([1] * (t.dim() - 1)))
