"""The service's web page: drop or choose an image, see what the model says (no external
assets: it works on an offline network).

By the answer's ``kind``: classes with their scores (classify), the score and the heat map
(anomaly), each class's share of the image and the predicted mask (segment), the boxes listed
and drawn (detect). The page asks for pictures (``?maps=1``); ``/?route=NAME`` sends the
images to that route."""

from __future__ import annotations

from vitkit.report._style import CSS

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>vitkit serve</title><style>""" + CSS + """
#drop { border: 2px dashed var(--line); border-radius: 10px; padding: 28px; text-align: center;
  background: var(--card); cursor: pointer; }
#drop.over { border-color: var(--accent); background: #f0f6ff; }
#preview, #map { max-width: 100%; max-height: 320px; border-radius: 8px; margin-top: 12px; }
.topk { margin: 4px 0; display: grid; grid-template-columns: minmax(80px, 30%) 1fr 4.5em;
  gap: 8px; align-items: center; font-size: 14px; }
.topk .track { background: #eef1f4; border-radius: 4px; height: 12px; }
.topk .fill { background: #b6d7ff; border-radius: 4px; height: 12px; }
#label { font-size: 28px; font-weight: 650; }
#label.unknown, #label.anomaly { color: var(--bad); }
#error { color: var(--bad); }
.offscreen { position: absolute; width: 1px; height: 1px; opacity: 0; }
#boxes { margin: 8px 0 0; padding-left: 20px; font-size: 14px; }
#boxes li { font-variant-numeric: tabular-nums; }
</style></head>
<body><main class="page">
<header class="masthead"><div class="brand">vitkit · serve</div><h1>Try the model</h1>
<p class="facts" id="models">loading…</p></header>
<section class="card"><label id="drop" for="file">Drop an image here, or click to choose one
<input id="file" type="file" accept="image/*" class="offscreen"></label>
<img id="preview" alt="" hidden></section>
<section class="card" id="answer" hidden>
<div id="label"></div><p class="note" id="why"></p><div id="bars"></div>
<ol id="boxes" hidden></ol>
<img id="map" alt="anomaly map" hidden>
<p class="note" id="who"></p></section>
<p id="error" role="alert"></p>
</main>
<script>
const $ = id => document.getElementById(id);
// The picture each kind of answer carries (with ?maps=1), and what it shows.
const PICTURES = {anomaly: ['map_png', 'anomaly map'],
                  segment: ['mask_png', 'predicted mask: a colour per class'],
                  detect: ['boxes_png', 'the detected boxes drawn on the image']};
function shares(p) {  // bars: classify's top classes, or segment's share of each class
  if (p.kind === 'segment') return Object.entries(p.classes || {})
    .sort((a, b) => b[1] - a[1]).map(([label, score]) => ({label: label, score: score}));
  return p.topk || [];
}
fetch('/v1/models').then(r => r.json()).then(info => {
  $('models').textContent = info.models.map(m => m.name + ' (' + (m.kind || '?') + ', ' +
    (m.ready ? 'ready' : 'not ready') + ')').join(' · ');
});
function show(p) {
  $('answer').hidden = false;
  $('label').textContent = p.label;
  $('label').className = p.unknown ? 'unknown' : p.label;
  const why = [];
  if (p.unknown) why.push('unknown: unlike the training images (OOD score ' +
                          p.ood_score.toFixed(3) + ')');
  if (p.kind === 'anomaly') why.push('score ' + p.score.toFixed(3) + ' (0.5 = threshold)');
  if (p.kind === 'segment') why.push('the largest class besides the background; share of ' +
                                     'the image per class:');
  if (p.kind === 'detect') why.push((p.boxes || []).length + ' boxes' +
    ((p.boxes || []).length ? ', best score ' + p.score.toFixed(3) : ''));
  $('why').textContent = why.join(' · ');
  $('bars').replaceChildren(...shares(p).map(t => {
    const row = document.createElement('div'); row.className = 'topk';
    const name = document.createElement('span'); name.textContent = t.label;
    const track = document.createElement('div'); track.className = 'track';
    const fill = document.createElement('div'); fill.className = 'fill';
    fill.style.width = (100 * t.score).toFixed(1) + '%'; track.append(fill);
    const value = document.createElement('span');
    value.textContent = (100 * t.score).toFixed(1) + '%';
    row.append(name, track, value); return row;
  }));
  const boxes = p.kind === 'detect' ? (p.boxes || []) : [];
  $('boxes').hidden = !boxes.length;
  $('boxes').replaceChildren(...boxes.map(b => {
    const item = document.createElement('li');
    item.textContent = b.label + ' ' + b.score.toFixed(3) + ' at [' +
      b.box.map(v => v.toFixed(1)).join(', ') + ']';
    return item;
  }));
  const [key, what] = PICTURES[p.kind] || ['map_png', 'anomaly map'];
  const picture = p[key] || p.map_png;
  $('map').hidden = !picture;
  if (picture) { $('map').src = 'data:image/png;base64,' + picture; $('map').alt = what; }
  $('who').textContent = 'model ' + p.model + ' · version ' + p.version + ' · arm ' + p.arm +
    (p.fallback_from ? ' · fallback from ' + p.fallback_from : '') + ' · ' +
    p.latency_ms.toFixed(1) + ' ms';
}
async function send(file) {
  $('error').textContent = '';
  $('preview').src = URL.createObjectURL(file); $('preview').hidden = false;
  const form = new FormData(); form.append('files', file);
  const route = new URLSearchParams(location.search).get('route');  // /?route=NAME
  const response = await fetch('/v1/predict?maps=1' +
    (route ? '&route=' + encodeURIComponent(route) : ''), {method: 'POST', body: form});
  const body = await response.json();
  if (!response.ok) { $('answer').hidden = true;
    $('error').textContent = body.error + ': ' + body.detail; return; }
  show(body.predictions[0]);
}
$('file').addEventListener('change', e => e.target.files[0] && send(e.target.files[0]));
const drop = $('drop');
['dragenter', 'dragover'].forEach(t => drop.addEventListener(t, e => {
  e.preventDefault(); drop.classList.add('over'); }));
['dragleave', 'drop'].forEach(t => drop.addEventListener(t, e => {
  e.preventDefault(); drop.classList.remove('over'); }));
drop.addEventListener('drop', e => e.dataTransfer.files[0] && send(e.dataTransfer.files[0]));
</script></body></html>
"""
