"""Inline stylesheet of the HTML report (system fonts only: nothing is fetched)."""

from __future__ import annotations

CSS = """
:root {
  --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --bg: #f6f8fa; --card: #ffffff;
  --accent: #0969da; --good: #1a7f37; --good-bg: #dafbe1; --bad: #cf222e; --bad-bg: #ffebe9;
  --warn-bg: #fff8c5; --warn-line: #d4a72c;
}
* { box-sizing: border-box; }
html { background: var(--bg); }
body {
  margin: 0; color: var(--fg); font-size: 15px; line-height: 1.5;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
    "Noto Sans", "Liberation Sans", sans-serif;
}
code, .path { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono",
  monospace; font-size: 0.86em; }
.page { max-width: 1180px; margin: 0 auto; padding: 28px 24px 40px; }
.masthead { margin-bottom: 20px; }
.brand { color: var(--accent); font-weight: 600; font-size: 13px; letter-spacing: .06em;
  text-transform: uppercase; }
h1 { margin: 4px 0 2px; font-size: 28px; line-height: 1.25; word-break: break-word; }
h2 { margin: 0 0 12px; font-size: 18px; }
.facts { margin: 0; color: var(--muted); }
.facts code { background: #eef1f4; padding: 1px 5px; border-radius: 4px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
  padding: 20px 22px; margin: 16px 0; box-shadow: 0 1px 2px rgba(31, 35, 40, .04); }
.lead { margin: -4px 0 14px; color: var(--muted); }
.notice { background: var(--warn-bg); border: 1px solid var(--warn-line); border-radius: 10px;
  padding: 12px 18px; margin: 16px 0; }
.notice ul { margin: 6px 0 0; padding-left: 20px; }
.metrics { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr));
  gap: 12px; margin: 16px 0; }
.metric { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
  padding: 14px 16px; }
.metric.primary { border-color: var(--accent); box-shadow: inset 4px 0 0 var(--accent); }
.metric-label { color: var(--muted); font-size: 13px; font-weight: 600; }
.metric-value { font-size: 28px; font-weight: 650; line-height: 1.2; margin: 4px 0 2px;
  font-variant-numeric: tabular-nums; }
.metric-note { color: var(--muted); font-size: 12px; }
.absent { color: var(--muted); font-style: italic; margin: 8px 0; }
.ok { color: var(--good); margin: 8px 0; }
img.plot { display: block; max-width: 100%; height: auto; margin: 4px auto 16px;
  border-radius: 6px; }
img.plot.matrix { max-width: min(100%, 760px); }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
caption { caption-side: top; text-align: left; color: var(--muted); font-size: 13px;
  padding-bottom: 6px; }
th, td { padding: 6px 10px; border-bottom: 1px solid var(--line); text-align: left;
  vertical-align: top; }
thead th { background: var(--bg); font-weight: 600; white-space: nowrap; }
table.numeric td { font-variant-numeric: tabular-nums; white-space: nowrap; }
table.data tbody tr:nth-child(even) { background: #fbfcfd; }
table.data tbody tr.best { background: var(--good-bg); }
table.kv th { width: 210px; color: var(--muted); font-weight: 600; }
table.kv td { word-break: break-word; }
td.path { word-break: break-all; }
.bar-cell { position: relative; min-width: 130px; }
.bar { position: absolute; left: 10px; top: 7px; bottom: 7px; max-width: calc(100% - 20px);
  background: #b6d7ff; border-radius: 3px; }
.bar-text { position: relative; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(176px, 1fr)); gap: 12px; }
figure.prediction { margin: 0; border: 3px solid var(--line); border-radius: 10px;
  overflow: hidden; background: var(--card); display: flex; flex-direction: column; }
figure.prediction.correct { border-color: var(--good); }
figure.prediction.wrong { border-color: var(--bad); }
.thumb { height: 164px; display: flex; align-items: center; justify-content: center;
  background: #eef1f4; }
.thumb img { max-width: 100%; max-height: 160px; width: auto; height: auto; display: block; }
.placeholder { width: 120px; height: 120px; border: 2px dashed #8c959f; border-radius: 8px;
  color: var(--muted); display: flex; align-items: center; justify-content: center;
  text-align: center; font-size: 12px; padding: 8px; }
figcaption { padding: 8px 10px 10px; font-size: 13px; display: flex; flex-direction: column;
  gap: 1px; word-break: break-word; }
.verdict { font-weight: 700; font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.correct .verdict { color: var(--good); }
.wrong .verdict { color: var(--bad); }
.k { display: inline-block; min-width: 3.4em; margin-right: 4px; white-space: nowrap;
  color: var(--muted); }
details.more { margin-top: 12px; }
details.more summary { cursor: pointer; color: var(--accent); }
.score { color: var(--muted); font-variant-numeric: tabular-nums; }
figcaption .path { color: var(--muted); font-size: 11px; margin-top: 3px;
  white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.part-head { margin: 32px 0 4px; padding-top: 16px; border-top: 2px solid var(--line); }
.part-head h2 { font-size: 22px; margin-bottom: 4px; }
.part-head .lead { margin: 0; }
.note { color: var(--muted); font-size: 13px; margin: 6px 0; }
figure.prediction.neutral { border-color: var(--line); }
.footer { color: var(--muted); font-size: 12px; margin-top: 24px; text-align: center; }
@media print { html { background: #fff; } .card, .metric { box-shadow: none; }
  figure.prediction { break-inside: avoid; } }
"""
