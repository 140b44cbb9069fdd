// The routing view: one self-contained HTML page (no external assets) that the server answers
// GET / with. A person types a prompt and generates; the page POSTs /v1/completions with
// stream: true and routing: true, parses the server-sent events off fetch's ReadableStream and
// shows each generated token as a box coloured by how the router sent it in the selected layer.
//
// The colour mapping (exported below so that tests and other views use the same):
//   path weight   w = gates[1] / (gates[0] + gates[1]), the global path's share of the token
//                 (a layer with only a local path: w = 0; only a global path: w = 1; 'concat'
//                 fusion, which has no gates: NONE, grey). The colour is LOCAL + w (GLOBAL - LOCAL)
//                 per sRGB channel, rounded to integers: mixColour(w).
//   expert        an MoE layer's first-choice expert e: EXPERT_COLOURS[e % 8] (no MoE: NONE).
// A 'routed' (Mixture-of-Depths) global path also marks each token: a solid dark outline when
// its global attention took the token, a dashed grey one when it skipped it.
// The chart draws one bar per layer, its height CHART_BAR_HEIGHT * (mean w over the tokens so far).
//
// Elements carry data-testid attributes; the token area gets data-done="true" when a
// generation ended (data-done="error" when it failed) and each token box data-text (the text it
// added to the completion, maybe ''), data-token (the id) and data-colour ("r,g,b").

export type RGB = [number, number, number];

/** The colour of a token the local path carried alone (w = 0). */
export const LOCAL_COLOUR: RGB = [37, 99, 235];
/** The colour of a token the global path carried alone (w = 1). */
export const GLOBAL_COLOUR: RGB = [234, 88, 12];
/** No routing to show (no gates, no expert). */
export const NONE_COLOUR: RGB = [209, 213, 219];
/** First-choice experts, modulo 8. */
export const EXPERT_COLOURS: RGB[] = [[78, 121, 167], [242, 142, 43], [225, 87, 89], [118, 183, 178], [89, 161, 79], [237, 201, 72], [176, 122, 161], [156, 117, 95]];
/** The chart's bar height for a mean global weight of 1, in CSS pixels. */
export const CHART_BAR_HEIGHT = 100;

/** The global path's share of a token: gates[1] / (gates[0] + gates[1]); null for no gates. */
export function globalWeight(gates: [number, number] | null): number | null {
  if (!gates) return null;
  const s = gates[0] + gates[1];
  return s > 0 ? gates[1] / s : null;
}

/** The page's colour for a global weight w in [0, 1]. */
export function mixColour(w: number): RGB {
  return [0, 1, 2].map((i) => Math.round(LOCAL_COLOUR[i] + w * (GLOBAL_COLOUR[i] - LOCAL_COLOUR[i]))) as RGB;
}

const COLOURS = JSON.stringify({ local: LOCAL_COLOUR, global: GLOBAL_COLOUR, none: NONE_COLOUR, experts: EXPERT_COLOURS, barHeight: CHART_BAR_HEIGHT });

// The page's script is plain browser JavaScript (no framework, no modules). String.raw keeps its
// backslashes; the only interpolation is the colour table above.
export const PAGE_HTML = String.raw`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>dualroute: routing view</title>
<style>
  :root { color-scheme: light; --fg: #111827; --muted: #4b5563; --line: #d1d5db; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); background: #fff; }
  main { max-width: 60rem; margin: 0 auto; padding: 1rem 1.25rem 3rem; }
  h1 { font-size: 1.35rem; margin: 0.25rem 0 0.75rem; }
  h1 small { font-weight: normal; color: var(--muted); font-size: 0.9rem; }
  h2 { font-size: 1rem; margin: 1.25rem 0 0.5rem; }
  label { font-weight: 600; }
  textarea { display: block; width: 100%; margin: 0.3rem 0 0.6rem; font: 14px/1.4 ui-monospace, "DejaVu Sans Mono", monospace; padding: 0.5rem; border: 1px solid #9ca3af; border-radius: 4px; }
  .row { display: flex; flex-wrap: wrap; gap: 0.5rem 1rem; align-items: center; }
  .row > span { display: inline-flex; gap: 0.4rem; align-items: center; }
  input[type=number] { width: 6rem; padding: 0.25rem 0.4rem; border: 1px solid #9ca3af; border-radius: 4px; font: inherit; }
  select { padding: 0.25rem 0.4rem; font: inherit; }
  button { font: inherit; padding: 0.35rem 1rem; border-radius: 4px; border: 1px solid #1d4ed8; background: #1d4ed8; color: #fff; cursor: pointer; }
  button[disabled] { opacity: 0.5; cursor: default; }
  button.secondary { background: #fff; color: #1d4ed8; }
  button:focus-visible, select:focus-visible, input:focus-visible, textarea:focus-visible { outline: 3px solid #f59e0b; outline-offset: 1px; }
  #status { color: var(--muted); min-height: 1.4em; margin: 0.75rem 0 0.25rem; }
  #error { color: #b91c1c; font-weight: 600; }
  #prompt-echo { white-space: pre-wrap; color: var(--muted); font: 14px/1.4 ui-monospace, "DejaVu Sans Mono", monospace; margin: 0.25rem 0; }
  #tokens { min-height: 3rem; padding: 0.6rem; border: 1px solid var(--line); border-radius: 6px; background: #fff; font: 15px/1 ui-monospace, "DejaVu Sans Mono", monospace; }
  /* a token: a box whose background is its colour; the bottom padding is glyph-free colour */
  .tok { display: inline-block; white-space: pre; padding: 3px 2px 8px; margin: 0 2px 6px 0; border-radius: 2px; min-width: 0.7em; text-align: center; vertical-align: top; }
  .tok.taken { outline: 2px solid #111827; outline-offset: 1px; }
  .tok.skipped { outline: 1px dashed #6b7280; outline-offset: 1px; }
  .tok.held { font-style: italic; }
  #legend { display: flex; flex-wrap: wrap; gap: 0.4rem 1.2rem; align-items: center; font-size: 0.9rem; margin-top: 0.5rem; }
  #legend .swatch { display: inline-block; width: 1.1rem; height: 0.9rem; vertical-align: middle; margin-right: 0.3rem; border-radius: 2px; }
  #legend .ramp { display: inline-block; width: 9rem; height: 0.9rem; vertical-align: middle; margin: 0 0.4rem; border-radius: 2px; }
  figure { margin: 1rem 0 0; }
  figcaption { color: var(--muted); font-size: 0.9rem; }
  .visually-hidden { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; }
</style>
</head>
<body>
<main data-testid="app">
  <h1>Routing view <small id="model-name" data-testid="model-name"></small></h1>
  <form id="form" data-testid="form">
    <label for="prompt">Prompt</label>
    <textarea id="prompt" name="prompt" data-testid="prompt" rows="4" required>The router sends each token</textarea>
    <div class="row">
      <span><label for="max-tokens">Max tokens</label><input id="max-tokens" name="max-tokens" data-testid="max-tokens" type="number" min="1" max="1024" step="1" value="48" required></span>
      <span><label for="temperature">Temperature</label><input id="temperature" name="temperature" data-testid="temperature" type="number" min="0" max="2" step="0.05" value="0.8" required></span>
      <button id="generate" data-testid="generate" type="submit">Generate</button>
      <button id="stop" data-testid="stop" type="button" class="secondary" disabled>Stop</button>
    </div>
  </form>

  <h2 id="view-heading">How the router sent each token</h2>
  <div class="row" role="group" aria-labelledby="view-heading">
    <span><label for="layer">Layer</label><select id="layer" data-testid="layer-select"></select></span>
    <span><label for="colour-by">Colour by</label><select id="colour-by" data-testid="colour-by">
      <option value="path">path weight (local to global)</option>
      <option value="expert">MoE expert</option>
    </select></span>
  </div>
  <div id="legend" data-testid="legend" aria-label="Legend"></div>

  <p id="status" role="status" aria-live="polite" data-testid="status">Loading the model's layers…</p>
  <p id="error" role="alert" data-testid="error" hidden></p>
  <div id="prompt-echo" data-testid="prompt-echo"></div>
  <div id="tokens" data-testid="tokens" data-done="false" role="region" aria-label="Completion: one coloured box per generated token; hover a token for its routing"></div>

  <figure>
    <svg id="chart" data-testid="chart" role="img" aria-labelledby="chart-title" xmlns="http://www.w3.org/2000/svg" width="240" height="150"><title id="chart-title">Mean global weight per layer</title></svg>
    <figcaption>Mean global weight w = gates[1] / (gates[0] + gates[1]) per layer over the tokens so far (bar height: w × 100 px; no bar for a layer without gates).</figcaption>
  </figure>
</main>
<script>
(function () {
  'use strict';
  var C = ${COLOURS};
  var SVG = 'http://www.w3.org/2000/svg';
  var $ = function (id) { return document.getElementById(id); };
  var st = { layers: [], tokens: [], sums: [], counts: [], layer: 0, by: 'path', ctrl: null, finish: null };

  // ---- the documented colour mapping ----
  function globalWeight(L, info) {
    if (L && L.gates) { var s = L.gates[0] + L.gates[1]; return s > 0 ? L.gates[1] / s : null; }
    if (info && info.local === 'none') return 1;
    if (info && info.global === 'none') return 0;
    return null;
  }
  function mix(w) { return [0, 1, 2].map(function (i) { return Math.round(C.local[i] + w * (C.global[i] - C.local[i])); }); }
  function css(c) { return 'rgb(' + c[0] + ', ' + c[1] + ', ' + c[2] + ')'; }
  function ink(c) { return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2] > 150 ? '#111827' : '#ffffff'; }
  function colourOf(t) {
    var L = t.layers[st.layer];
    if (!L) return C.none;
    if (st.by === 'expert') return L.expert === null || L.expert === undefined ? C.none : C.experts[L.expert % C.experts.length];
    var w = globalWeight(L, st.layers[st.layer]);
    return w === null ? C.none : mix(w);
  }

  // ---- how a token's text shows ----
  function shown(text) {
    if (text === '') return '\u00b7';
    return text.replace(/[\u0000-\u001f\u007f]/g, function (ch) {
      if (ch === '\n') return '\u23ce';
      if (ch === '\t') return '\u21e5';
      return String.fromCharCode(ch === '\u007f' ? 0x2421 : 0x2400 + ch.charCodeAt(0));
    });
  }
  function describeLayer(info) {
    return info.index + ': ' + info.local + ' + ' + info.global + (info.fusion ? ' (' + info.fusion + ')' : '') + (info.moe ? ', MoE' : '');
  }
  function fmt(x) { return x.toFixed(3); }
  function details(t) {
    var lines = ['token ' + t.token + ' ' + JSON.stringify(t.piece) + (t.text !== t.piece ? ' (shows ' + JSON.stringify(t.text) + ')' : '')];
    t.layers.forEach(function (L, i) {
      var info = st.layers[i] || { local: '?', global: '?' };
      var parts = [];
      var w = globalWeight(L, info);
      if (L.gates) parts.push('local ' + fmt(L.gates[0]) + ', global ' + fmt(L.gates[1]) + ' (w ' + fmt(w) + ')');
      else parts.push(w === null ? 'no gates' : 'one path (w ' + w + ')');
      if (L.routed !== null) parts.push(L.routed ? 'taken by global attention' : 'skipped by global attention');
      if (L.expert !== null) parts.push('expert ' + L.expert);
      if (L.segments) parts.push('segments ' + L.segments.join(' '));
      lines.push((i === st.layer ? '▶ ' : '  ') + 'layer ' + i + ': ' + parts.join('; '));
    });
    return lines.join('\n');
  }
  function paint(t) {
    var c = colourOf(t), el = t.el, L = t.layers[st.layer];
    el.style.backgroundColor = css(c);
    el.style.color = ink(c);
    el.setAttribute('data-colour', c.join(','));
    el.classList.toggle('taken', !!L && L.routed === true);
    el.classList.toggle('skipped', !!L && L.routed === false);
    el.title = details(t);
  }

  // ---- the chart: one bar per layer, the mean global weight so far ----
  function chart() {
    var svg = $('chart'), n = st.layers.length, bw = 28, gap = 14, left = 34, top = 16, H = C.barHeight;
    var width = Math.max(240, left + n * (bw + gap) + 10), height = top + H + 34;
    svg.setAttribute('width', String(width));
    svg.setAttribute('height', String(height));
    svg.setAttribute('viewBox', '0 0 ' + width + ' ' + height);
    while (svg.lastChild && svg.lastChild.nodeName !== 'title') svg.removeChild(svg.lastChild);
    var add = function (name, attrs, text) {
      var e = document.createElementNS(SVG, name);
      Object.keys(attrs).forEach(function (k) { e.setAttribute(k, String(attrs[k])); });
      if (text !== undefined) e.textContent = text;
      svg.appendChild(e);
      return e;
    };
    add('line', { x1: left - 4, y1: top + H, x2: width - 6, y2: top + H, stroke: '#6b7280' });
    add('line', { x1: left - 4, y1: top, x2: left - 4, y2: top + H, stroke: '#6b7280' });
    add('text', { x: left - 8, y: top + 4, 'text-anchor': 'end', 'font-size': 10, fill: '#4b5563' }, '1');
    add('text', { x: left - 8, y: top + H + 4, 'text-anchor': 'end', 'font-size': 10, fill: '#4b5563' }, '0');
    for (var i = 0; i < n; ++i) {
      var m = st.counts[i] > 0 ? st.sums[i] / st.counts[i] : null;
      var h = m === null ? 0 : m * H, x = left + i * (bw + gap) + gap / 2;
      var bar = add('rect', {
        x: x, y: top + H - h, width: bw, height: h, fill: css(m === null ? C.none : mix(m)),
        stroke: i === st.layer ? '#111827' : 'none', 'stroke-width': 2,
        'data-testid': 'chart-bar', 'data-layer': i, 'data-mean': m === null ? '' : m,
      });
      var tt = document.createElementNS(SVG, 'title');
      tt.textContent = 'layer ' + i + ': ' + (m === null ? 'no gates' : 'mean global weight ' + fmt(m) + ' over ' + st.counts[i] + ' tokens');
      bar.appendChild(tt);
      add('text', { x: x + bw / 2, y: top + H + 14, 'text-anchor': 'middle', 'font-size': 11, fill: '#111827' }, String(i));
      if (m !== null) add('text', { x: x + bw / 2, y: top + H - h - 3, 'text-anchor': 'middle', 'font-size': 9, fill: '#4b5563' }, m.toFixed(2));
    }
    add('text', { x: left + (width - left) / 2, y: height - 4, 'text-anchor': 'middle', 'font-size': 11, fill: '#4b5563' }, 'layer');
  }

  function legend() {
    var el = $('legend'), info = st.layers[st.layer];
    el.textContent = '';
    var item = function (bg, label, cls) {
      var s = document.createElement('span');
      var sw = document.createElement('span');
      sw.className = 'swatch' + (cls ? ' ' + cls : '');
      sw.style.background = bg;
      if (cls === 'taken') sw.style.outline = '2px solid #111827';
      if (cls === 'skipped') sw.style.outline = '1px dashed #6b7280';
      s.appendChild(sw);
      s.appendChild(document.createTextNode(label));
      el.appendChild(s);
    };
    if (st.by === 'path') {
      var s = document.createElement('span');
      s.appendChild(document.createTextNode('local'));
      var ramp = document.createElement('span');
      ramp.className = 'ramp';
      ramp.setAttribute('role', 'img');
      ramp.setAttribute('aria-label', 'colour scale from the local colour (w = 0) to the global colour (w = 1)');
      ramp.style.background = 'linear-gradient(to right, ' + css(C.local) + ', ' + css(C.global) + ')';
      s.appendChild(ramp);
      s.appendChild(document.createTextNode('global (w = global gate / sum of gates)'));
      el.appendChild(s);
      item(css(C.none), 'no gates');
    } else {
      var seen = {};
      st.tokens.forEach(function (t) { var L = t.layers[st.layer]; if (L && L.expert !== null) seen[L.expert] = true; });
      var ex = Object.keys(seen).map(Number).sort(function (a, b) { return a - b; });
      if (!ex.length) item(css(C.none), info && !info.moe ? 'this model has no MoE' : 'no experts yet');
      ex.forEach(function (e) { item(css(C.experts[e % C.experts.length]), 'expert ' + e); });
    }
    if (info && info.global === 'routed') {
      item('transparent', 'taken by global attention', 'taken');
      item('transparent', 'skipped', 'skipped');
    }
  }

  function repaint() {
    st.tokens.forEach(paint);
    legend();
    chart();
  }

  // ---- a generated token ----
  function addToken(r, text) {
    var t = { token: r.token, piece: r.piece, layers: r.layers, text: text, el: document.createElement('span') };
    t.el.className = 'tok' + (text === '' ? ' held' : '');
    t.el.setAttribute('data-testid', 'token');
    t.el.setAttribute('data-index', String(st.tokens.length));
    t.el.setAttribute('data-token', String(r.token));
    t.el.setAttribute('data-text', text);
    t.el.setAttribute('tabindex', '0');
    t.el.textContent = shown(text);
    $('tokens').appendChild(t.el);
    if (text.indexOf('\n') >= 0) $('tokens').appendChild(document.createElement('br'));
    st.tokens.push(t);
    r.layers.forEach(function (L, i) {
      var w = globalWeight(L, st.layers[i]);
      if (w !== null) { st.sums[i] = (st.sums[i] || 0) + w; st.counts[i] = (st.counts[i] || 0) + 1; }
    });
    paint(t);
  }
  // text released after the last token (held back while it could have begun a stop string)
  function addText(text) {
    var t = st.tokens[st.tokens.length - 1];
    if (!t || !text) return;
    t.text += text;
    t.el.setAttribute('data-text', t.text);
    t.el.classList.remove('held');
    t.el.textContent = shown(t.text);
    t.el.title = details(t);
  }

  function onEvent(block) {
    var data = block.split('\n').filter(function (l) { return l.indexOf('data:') === 0; }).map(function (l) { return l.slice(5).replace(/^ /, ''); }).join('\n');
    if (!data) return false;
    if (data === '[DONE]') return true;
    var msg = JSON.parse(data);
    if (msg.error) throw new Error(msg.error.message || 'the server failed');
    (msg.choices || []).forEach(function (ch) {
      if (ch.routing) addToken(ch.routing, ch.text || '');
      else if (ch.text) addText(ch.text);
      if (ch.finish_reason) st.finish = ch.finish_reason;
    });
    return false;
  }

  function setStatus(s) { $('status').textContent = s; }
  function fail(e) {
    $('error').hidden = false;
    $('error').textContent = String(e && e.message ? e.message : e);
  }

  async function generate(ev) {
    ev.preventDefault();
    if (st.ctrl) return;
    var prompt = $('prompt').value;
    var maxTokens = Number($('max-tokens').value), temperature = Number($('temperature').value);
    if (!$('form').reportValidity()) return;
    st.tokens = []; st.sums = []; st.counts = []; st.finish = null;
    $('tokens').textContent = '';
    $('tokens').setAttribute('data-done', 'false');
    $('tokens').setAttribute('aria-busy', 'true');
    $('error').hidden = true;
    $('prompt-echo').textContent = prompt;
    repaint();
    $('generate').disabled = true;
    $('stop').disabled = false;
    setStatus('Generating…');
    var ctrl = (st.ctrl = new AbortController());
    var outcome = 'true';
    try {
      var res = await fetch('/v1/completions', {
        method: 'POST', headers: { 'content-type': 'application/json' }, signal: ctrl.signal,
        body: JSON.stringify({ prompt: prompt, max_tokens: maxTokens, temperature: temperature, stream: true, routing: true }),
      });
      if (!res.ok) {
        var j = await res.json().catch(function () { return null; });
        throw new Error(j && j.error ? j.error.message : 'HTTP ' + res.status);
      }
      var reader = res.body.getReader(), dec = new TextDecoder(), buf = '', done = false;
      while (!done) {
        var r = await reader.read();
        if (r.done) break;
        buf += dec.decode(r.value, { stream: true }).replace(/\r\n/g, '\n');
        var at;
        while (!done && (at = buf.indexOf('\n\n')) >= 0) {
          done = onEvent(buf.slice(0, at));
          buf = buf.slice(at + 2);
        }
        setStatus('Generating… ' + st.tokens.length + ' tokens');
        chart();
      }
      setStatus('Done: ' + st.tokens.length + ' tokens' + (st.finish ? ' (finish: ' + st.finish + ')' : '') + '.');
    } catch (e) {
      if (ctrl.signal.aborted) {
        setStatus('Stopped after ' + st.tokens.length + ' tokens.');
      } else {
        outcome = 'error';
        fail(e);
        setStatus('Failed after ' + st.tokens.length + ' tokens.');
      }
    } finally {
      st.ctrl = null;
      $('generate').disabled = false;
      $('stop').disabled = true;
      legend();
      chart();
      $('tokens').removeAttribute('aria-busy');
      $('tokens').setAttribute('data-done', outcome);
    }
  }

  async function init() {
    $('form').addEventListener('submit', generate);
    $('stop').addEventListener('click', function () { if (st.ctrl) st.ctrl.abort(); });
    $('layer').addEventListener('change', function () { st.layer = Number($('layer').value); repaint(); });
    $('colour-by').addEventListener('change', function () { st.by = $('colour-by').value; repaint(); });
    try {
      var res = await fetch('/v1/routing');
      if (!res.ok) throw new Error('GET /v1/routing: HTTP ' + res.status);
      var info = await res.json();
      st.layers = info.layers;
      $('model-name').textContent = info.model;
      var sel = $('layer');
      info.layers.forEach(function (L) {
        var o = document.createElement('option');
        o.value = String(L.index);
        o.textContent = describeLayer(L);
        sel.appendChild(o);
      });
      // start on the first layer with gates to show, if any
      var first = info.layers.findIndex(function (L) { return L.fusion && L.fusion !== 'concat'; });
      st.layer = first >= 0 ? first : 0;
      sel.value = String(st.layer);
      repaint();
      setStatus('Ready: ' + info.layers.length + ' layers.');
      document.body.setAttribute('data-ready', 'true');
    } catch (e) {
      fail(e);
      setStatus('Could not load the model\'s layers.');
    }
  }
  init();
})();
</script>
</body>
</html>
`;
