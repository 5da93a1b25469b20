"""A self-contained HTML page to browse an atlas: one searchable table and a histogram.

The page embeds its data as JSON and needs no network: a search box filters
neurons by the tokens they decode to, a layer box narrows to one layer, and
an SVG histogram shows per layer how many neurons have a clean, word-like
top token on the read side and on the write side.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from steerkit.atlas import Atlas
from steerkit.cache import atomic_write
from steerkit.decode import VIEWS
from steerkit.vocab import is_word_like, token_display

__all__ = ["word_like_counts", "write_atlas_html"]

TOKENS_SHOWN = 5


def word_like_counts(atlas: Atlas) -> dict[str, list[int]]:
    """Per layer, the number of neurons whose top-1 token (either sign) is word-like, per side."""
    word_like = np.array([is_word_like(t) for t in atlas.vocab])
    top1 = word_like[atlas.token_ids[..., 0]]  # [layers, d_ff, views]
    return {
        "read": [int(x) for x in (top1[:, :, 0] | top1[:, :, 1]).sum(axis=1)],
        "write": [int(x) for x in (top1[:, :, 2] | top1[:, :, 3]).sum(axis=1)],
    }


def _histogram_svg(counts: dict[str, list[int]], d_ff: int) -> str:
    n_layers = len(counts["read"])
    bar, gap, height = 8, 6, 160
    width = n_layers * (2 * bar + gap) + 40
    parts = [f'<svg width="{width}" height="{height + 40}" role="img" aria-label="word-like top tokens per layer">']
    for layer in range(n_layers):
        x = 30 + layer * (2 * bar + gap)
        for offset, (side, colour) in enumerate((("read", "#3b6ea5"), ("write", "#d9822b"))):
            h = height * counts[side][layer] / max(1, d_ff)
            parts.append(
                f'<rect x="{x + offset * bar}" y="{height - h:.1f}" width="{bar}" height="{h:.1f}" fill="{colour}">'
                f"<title>layer {layer} {side}: {counts[side][layer]} of {d_ff}</title></rect>"
            )
        if layer % 5 == 0:
            parts.append(f'<text x="{x}" y="{height + 14}" font-size="10">{layer}</text>')
    parts.append(f'<text x="0" y="{height + 32}" font-size="11">layer (blue: read side, orange: write side; bar = share of {d_ff} neurons)</text>')
    parts.append("</svg>")
    return "".join(parts)


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>steerkit atlas: {title}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:1.5em;color:#222}}
table{{border-collapse:collapse;font-size:13px}} td,th{{border-bottom:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}}
th{{background:#f4f4f4;position:sticky;top:0}} code{{background:#f6f6f6;padding:0 3px;border-radius:3px}}
input{{font-size:14px;padding:4px;margin-right:1em}} .p{{color:#888;font-size:11px}} mark{{background:#ffe58a}}
</style></head><body>
<h1>Neuron atlas: {title}</h1>
<p>{summary}</p>
<h2>Neurons with a word-like top token, per layer</h2>
{histogram}
<h2>Neurons</h2>
<p><label>token contains <input id="q" placeholder="e.g. dog" autofocus></label>
<label>layer <input id="layer" size="4" placeholder="all"></label>
<label>neuron <input id="neuron" size="5" placeholder="all"></label>
<label><input type="checkbox" id="exact"> whole token only</label> <span id="count"></span></p>
<table><thead><tr><th>neuron</th>{view_headers}</tr></thead><tbody id="rows"></tbody></table>
<script>
const VOCAB = {vocab};
const VIEWS = {views};
const DATA = {data};  // [layer, neuron, [[ids...], p1] x views]
const rows = document.getElementById('rows');
function esc(s){{return s.replace(/[&<>]/g,c=>({{'&':'&amp;','<':'&lt;','>':'&gt;'}}[c]));}}
function render(){{
  const q = document.getElementById('q').value.trim().toLowerCase();
  const exact = document.getElementById('exact').checked;
  const lf = document.getElementById('layer').value.trim();
  const nf = document.getElementById('neuron').value.trim();
  const hit = t => exact ? t.trim().toLowerCase() === q : t.toLowerCase().includes(q);
  let out = [], n = 0;
  for (const [layer, neuron, views] of DATA) {{
    if (lf !== '' && String(layer) !== lf) continue;
    if (nf !== '' && String(neuron) !== nf) continue;
    if (q && !views.some(v => v[0].some(i => hit(VOCAB[i])))) continue;
    n++;
    if (out.length >= 300) continue;
    const cells = views.map(v => '<td>' + v[0].map(i => {{const t = VOCAB[i]; return '<code>' + (q && hit(t) ? '<mark>' + esc(t) + '</mark>' : esc(t)) + '</code>';}}).join(' ') + ' <span class="p">' + v[1].toFixed(3) + '</span></td>').join('');
    out.push('<tr><td>' + layer + ':' + neuron + '</td>' + cells + '</tr>');
  }}
  rows.innerHTML = out.join('');
  document.getElementById('count').textContent = n + ' neurons' + (n > 300 ? ' (first 300 shown)' : '');
}}
for (const id of ['q','layer','neuron','exact']) document.getElementById(id).addEventListener('input', render);
// A link to PAGE#LAYER:NEURON opens on that neuron.
const target = /^#([0-9]+):([0-9]+)$/.exec(location.hash);
if (target) {{ document.getElementById('layer').value = target[1]; document.getElementById('neuron').value = target[2]; }}
render();
</script></body></html>
"""


def _script_json(value) -> str:
    """JSON safe inside a ``<script>`` element: no ``<`` (``</script>``, ``<!--``), ``>`` or ``&`` can end or
    re-open it, and the two line separators JavaScript strings once refused are escaped."""
    text = json.dumps(value, separators=(",", ":"))
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                          ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    return text


def write_atlas_html(atlas: Atlas, path: str | Path) -> Path:
    """Write the browsing page for ``atlas`` to ``path`` (atomically); return the path."""
    shown = atlas.token_ids[..., :TOKENS_SHOWN]
    used = np.unique(shown)
    remap = {int(old): new for new, old in enumerate(used)}
    display_token = token_display(atlas.vocab)
    vocab = [display_token(atlas.vocab[int(i)]) for i in used]
    data = []
    d_ff, experts = int(atlas.meta["d_ff"]), int(atlas.meta.get("n_experts", 1))
    for layer in range(atlas.n_layers):
        for neuron in range(atlas.neurons):
            views = [
                [[remap[int(i)] for i in shown[layer, neuron, v]], round(float(atlas.probs[layer, neuron, v, 0]), 4)]
                for v in range(len(VIEWS))
            ]
            # An expert's neuron is named expert:index (the neuron box filters on that text).
            data.append([layer, neuron if experts == 1 else ":".join(map(str, divmod(neuron, d_ff))), views])
    counts = word_like_counts(atlas)
    meta = atlas.meta
    summary = (
        f"{html.escape(str(meta['arch']))} model, {int(meta['n_layers'])} layers x "
        f"{f'{experts} experts x ' if experts > 1 else ''}{d_ff} neurons, "
        f"vocabulary {int(meta['vocab_size'])}; "
        f"fingerprint <code>{html.escape(str(meta['fingerprint'])[:16])}</code>. Views: read = up_proj row (what the neuron responds to), "
        "write = down_proj column (what it promotes); +/- = sign. Each cell: top tokens, then the top token's probability."
    )
    page = _PAGE.format(
        title=html.escape(str(meta["model"])),
        summary=summary,
        histogram=_histogram_svg(counts, atlas.neurons),
        view_headers="".join(f"<th>{v.label}</th>" for v in VIEWS),
        vocab=_script_json(vocab),
        views=_script_json([v.label for v in VIEWS]),
        data=_script_json(data),
    )
    with atomic_write(path, suffix=".html") as tmp:
        tmp.write_text(page, encoding="utf-8")
    return Path(path)
