"""The service's web page: drop or choose an image, see what the model says (no external
assets: it works on an offline network)."""

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
</style></head>
<body><main class="page">
<header class="masthead"><div class="brand">vitkit · serve</div><h1>Try the model</h1>
<p class="facts" id="models">loading…</p></header>
<section class="card"><label id="drop" for="file">Drop an image here, or click to choose one
<input id="file" type="file" accept="image/*" class="offscreen"></label>
<img id="preview" alt="" hidden></section>
<section class="card" id="answer" hidden>
<div id="label"></div><p class="note" id="why"></p><div id="bars"></div>
<img id="map" alt="anomaly map" hidden>
<p class="note" id="who"></p></section>
<p id="error" role="alert"></p>
</main>
<script>
const $ = id => document.getElementById(id);
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
  $('why').textContent = why.join(' · ');
  $('bars').replaceChildren(...(p.topk || []).map(t => {
    const row = document.createElement('div'); row.className = 'topk';
    const name = document.createElement('span'); name.textContent = t.label;
    const track = document.createElement('div'); track.className = 'track';
    const fill = document.createElement('div'); fill.className = 'fill';
    fill.style.width = (100 * t.score).toFixed(1) + '%'; track.append(fill);
    const value = document.createElement('span');
    value.textContent = (100 * t.score).toFixed(1) + '%';
    row.append(name, track, value); return row;
  }));
  $('map').hidden = !p.map_png;
  if (p.map_png) $('map').src = 'data:image/png;base64,' + p.map_png;
  $('who').textContent = 'model ' + p.model + ' · version ' + p.version + ' · arm ' + p.arm +
    (p.fallback_from ? ' · fallback from ' + p.fallback_from : '') + ' · ' +
    p.latency_ms.toFixed(1) + ' ms';
}
async function send(file) {
  $('error').textContent = '';
  $('preview').src = URL.createObjectURL(file); $('preview').hidden = false;
  const form = new FormData(); form.append('files', file);
  const response = await fetch('/v1/predict?maps=1', {method: 'POST', body: form});
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
