"""The JSON configs of DualRouteLM and DualRouteSeq2Seq: defaults and checks.

The same rules as lib/models/config.ts and lib/models/seq2seq.ts: every field is checked, an
error names the field's path, what was expected and what was received, and unknown keys are
refused (a misspelt key must not fall back to a default silently).
"""
import math

LAYER_KEYS = ['local', 'window', 'windowMode', 'convKernel', 'global', 'segment', 'topK', 'capacity',
              'fusion', 'gateUnits', 'rules', 'ruleDefault', 'randomProbs']
TOP_KEYS = ['vocabSize', 'dModel', 'nHeads', 'nKvHeads', 'nLayers', 'maxSeq', 'rope', 'ropeBase', 'normEps',
            'tieEmbeddings', 'dropout', 'layerDrop', 'ffn', 'ffnHidden', 'moe', 'layer', 'layers', 'pattern', 'seed']
MOE_KEYS = ['experts', 'topK', 'capacityFactor', 'score', 'auxLossWeight', 'zLossWeight']
SEQ2SEQ_KEYS = ['vocabSize', 'dModel', 'nHeads', 'nKvHeads', 'encoderLayers', 'decoderLayers', 'maxSource',
                'maxTarget', 'keep', 'encoder', 'decoder', 'rope', 'ropeBase', 'normEps', 'dropout', 'ffn',
                'ffnHidden', 'seed']


class ConfigError(ValueError):
    """A config field is missing, of the wrong type or out of range."""


def _describe(v):
    if v is None:
        return 'null'
    if isinstance(v, bool):
        return f'boolean {str(v).lower()}'
    if isinstance(v, (int, float)):
        return f'number {v}'
    if isinstance(v, str):
        return f"string '{v}'"
    if isinstance(v, list):
        return f'array of length {len(v)}'
    return type(v).__name__


class _Checker:
    def __init__(self, owner):
        self.owner = owner

    def fail(self, path, want, got):
        raise ConfigError(f'{self.owner} config: {path}: Expected {want} but received {_describe(got)}')

    def obj(self, path, v, keys):
        if not isinstance(v, dict):
            self.fail(path, 'an object', v)
        for k in v:
            if k not in keys:
                raise ConfigError(f"{self.owner} config: {path}: unknown key '{k}' (known: {', '.join(keys)})")
        return v

    def int(self, path, v, lo):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v) or v < lo:
            self.fail(path, f'an integer >= {lo}', v)
        return int(v)

    def num(self, path, v, ok, want):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not ok(v):
            self.fail(path, want, v)
        return float(v)

    def one_of(self, path, v, allowed):
        if v not in allowed:
            self.fail(path, 'one of ' + ', '.join(f"'{a}'" for a in allowed), v)
        return v

    def bool(self, path, v):
        if not isinstance(v, bool):
            self.fail(path, 'a boolean', v)
        return v


def _resolve_layer(ck, path, base, own):
    d = ck.obj(path, own, LAYER_KEYS)

    def get(k):
        return d[k] if d.get(k) is not None else base.get(k)

    def at(k):
        return f"{path if d.get(k) is not None else 'layer'}.{k}"

    def dflt(k, v):
        g = get(k)
        return v if g is None else g

    local = ck.one_of(at('local'), dflt('local', 'window'), ['window', 'conv', 'lstm', 'none'])
    glob = ck.one_of(at('global'), dflt('global', 'full'), ['full', 'segment', 'routed', 'nsa', 'none'])
    if local == 'none' and glob == 'none':
        raise ConfigError(f"{ck.owner} config: {path}: local and global are both 'none'; a layer needs at least one path")
    fusion = ck.one_of(at('fusion'), dflt('fusion', 'gated'), ['sum', 'gated', 'softmax', 'attention', 'concat', 'rule', 'random'])
    rules = dflt('rules', [])
    if not isinstance(rules, list):
        ck.fail(at('rules'), 'an array of rules', rules)
    if fusion == 'rule' and not rules:
        ck.fail(at('rules'), "a non-empty rule table for fusion 'rule'", get('rules'))
    probs = dflt('randomProbs', [0.5, 0.5])
    if (not isinstance(probs, list) or len(probs) != 2 or any(isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1 for p in probs)
            or abs(probs[0] + probs[1] - 1) > 1e-6):
        ck.fail(at('randomProbs'), 'two probabilities that sum to 1', probs)
    return {
        'local': local,
        'window': ck.int(at('window'), dflt('window', 64), 1),
        'windowMode': ck.one_of(at('windowMode'), dflt('windowMode', 'sliding'), ['sliding', 'block']),
        'convKernel': ck.int(at('convKernel'), dflt('convKernel', 4), 1),
        'global': glob,
        'segment': ck.int(at('segment'), dflt('segment', 64), 1),
        'topK': ck.int(at('topK'), dflt('topK', 8), 1),
        'capacity': ck.num(at('capacity'), dflt('capacity', 0.25), lambda x: 0 < x <= 1, 'a fraction in (0, 1]'),
        'fusion': fusion,
        'gateUnits': ck.one_of(at('gateUnits'), dflt('gateUnits', 'token'), ['token', 'channel']),
        'rules': rules,
        'ruleDefault': ck.int(at('ruleDefault'), dflt('ruleDefault', 0), 0),
        'randomProbs': [float(probs[0]), float(probs[1])],
    }


def resolve_config(config, owner='DualRouteLM'):
    """Checks a DualRouteLM config (a dict from JSON) and fills in the defaults."""
    ck = _Checker(owner)
    c = ck.obj('config', config, TOP_KEYS)
    d_model = ck.int('dModel', c.get('dModel'), 1)
    n_heads = ck.int('nHeads', c.get('nHeads'), 1)
    n_kv = ck.int('nKvHeads', c.get('nKvHeads', n_heads), 1)
    if d_model % n_heads:
        ck.fail('dModel', f'a multiple of nHeads ({n_heads})', d_model)
    if n_heads % n_kv:
        ck.fail('nKvHeads', f'a divisor of nHeads ({n_heads})', n_kv)
    n_layers = ck.int('nLayers', c.get('nLayers'), 1)
    max_seq = ck.int('maxSeq', c.get('maxSeq'), 1)
    rope = ck.bool('rope', c.get('rope', True))
    if rope and (d_model // n_heads) % 2:
        ck.fail('nHeads', 'a head width dModel / nHeads that is even (rope)', n_heads)
    ffn = ck.one_of('ffn', c.get('ffn', 'swiglu'), ['swiglu', 'gelu', 'moe'])
    moe = None
    if ffn == 'moe':
        if c.get('moe') is None:
            raise ConfigError(f"{owner} config: moe: ffn 'moe' needs moe: {{ experts, topK?, capacityFactor?, score? }}")
        m = ck.obj('moe', c['moe'], MOE_KEYS)
        experts = ck.int('moe.experts', m.get('experts'), 1)
        moe = {
            'experts': experts,
            'topK': ck.int('moe.topK', m.get('topK', min(2, experts)), 1),
            'capacityFactor': ck.num('moe.capacityFactor', m.get('capacityFactor', 0), lambda x: x >= 0, 'a number >= 0 (0: dropless)'),
            'score': ck.one_of('moe.score', m.get('score', 'softmax'), ['softmax', 'sigmoid']),
            'auxLossWeight': ck.num('moe.auxLossWeight', m.get('auxLossWeight', 0.01), lambda x: x >= 0, 'a number >= 0'),
            'zLossWeight': ck.num('moe.zLossWeight', m.get('zLossWeight', 0.001), lambda x: x >= 0, 'a number >= 0'),
        }
        if moe['topK'] > experts:
            ck.fail('moe.topK', f'at most moe.experts ({experts})', moe['topK'])
    elif c.get('moe') is not None:
        raise ConfigError(f"{owner} config: moe: given but ffn is '{ffn}' (set ffn: 'moe')")
    base = {} if c.get('layer') is None else ck.obj('layer', c['layer'], LAYER_KEYS)
    if c.get('layers') is not None and c.get('pattern') is not None:
        raise ConfigError(f'{owner} config: give layers (one per layer) or pattern (repeated), not both')
    if c.get('layers') is not None:
        if not isinstance(c['layers'], list) or len(c['layers']) != n_layers:
            ck.fail('layers', f'an array of nLayers ({n_layers}) layer configs', c['layers'])
        specs = c['layers']
        names = [f'layers[{i}]' for i in range(n_layers)]
    elif c.get('pattern') is not None:
        p = c['pattern']
        if not isinstance(p, list) or not p:
            ck.fail('pattern', 'a non-empty array of layer configs', p)
        specs = [p[i % len(p)] for i in range(n_layers)]
        names = [f'pattern[{i % len(p)}]' for i in range(n_layers)]
    else:
        specs = [{} for _ in range(n_layers)]
        names = ['layer'] * n_layers
    layers = [_resolve_layer(ck, names[i], base, s) for i, s in enumerate(specs)]
    dropout = ck.num('dropout', c.get('dropout', 0), lambda x: 0 <= x < 1, 'a probability in [0, 1)')
    layer_drop = ck.num('layerDrop', c.get('layerDrop', 0), lambda x: 0 <= x < 1, 'a probability in [0, 1)')
    hidden_default = 4 * d_model if ffn == 'gelu' else max(1, _round_half_up(8 * d_model / 3))
    return {
        'vocabSize': ck.int('vocabSize', c.get('vocabSize'), 1),
        'dModel': d_model, 'nHeads': n_heads, 'nKvHeads': n_kv, 'nLayers': n_layers, 'maxSeq': max_seq, 'rope': rope,
        'ropeBase': ck.num('ropeBase', c.get('ropeBase', 10000), lambda x: x > 0, 'a number > 0'),
        'normEps': ck.num('normEps', c.get('normEps', 1e-6), lambda x: x > 0, 'a number > 0'),
        'tieEmbeddings': ck.bool('tieEmbeddings', c.get('tieEmbeddings', True)),
        'dropout': dropout, 'layerDrop': layer_drop, 'ffn': ffn,
        'ffnHidden': ck.int('ffnHidden', c.get('ffnHidden', hidden_default), 1),
        'moe': moe, 'layers': layers,
        'seed': ck.int('seed', c.get('seed', 0), 0),
    }


def _round_half_up(x):
    # JavaScript's Math.round
    return int(math.floor(x + 0.5))


def resolve_seq2seq_config(config):
    """Checks a DualRouteSeq2Seq config; returns (encoder config, decoder config, keep)."""
    owner = 'DualRouteSeq2Seq'
    ck = _Checker(owner)
    c = ck.obj('config', config, SEQ2SEQ_KEYS)
    shared = {k: c[k] for k in ['vocabSize', 'dModel', 'nHeads', 'nKvHeads', 'rope', 'ropeBase', 'normEps', 'dropout',
                                'ffn', 'ffnHidden', 'seed'] if c.get(k) is not None}

    def side(n_layers, max_seq, layer):
        d = dict(shared, nLayers=c.get(n_layers), maxSeq=c.get(max_seq))
        if layer is not None:
            d['layer'] = layer
        return resolve_config(d, owner)

    enc = side('encoderLayers', 'maxSource', c.get('encoder'))
    dec = side('decoderLayers', 'maxTarget', c.get('decoder'))
    for layer in enc['layers']:
        if layer['global'] not in ('full', 'none'):
            raise ConfigError(f"{owner} config: encoder.global: Expected 'full' or 'none' (the encoder is bidirectional) but received '{layer['global']}'")
        if layer['local'] == 'lstm':
            raise ConfigError(f"{owner} config: encoder.local: Expected 'window', 'conv' or 'none' (an LSTM reads one way; the encoder is bidirectional) but received 'lstm'")
        if layer['local'] == 'conv' and layer['convKernel'] % 2 == 0:
            raise ConfigError(f"{owner} config: encoder.convKernel: Expected an odd kernel (a centred convolution) but received {layer['convKernel']}")
    keep = c.get('keep', 0.5)
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 < keep <= 1:
        ck.fail('keep', 'a fraction in (0, 1]', keep)
    return enc, dec, float(keep)
