"""``report.html``: the page, its data block and its summary (pure text functions of a :class:`Run`)."""
from __future__ import annotations

import datetime as _dt
import html
import json
import math
import platform
import sys
from collections import Counter
from typing import Any, Dict, List, Optional, Sequence
from urllib.parse import quote

from .assets import CSS, JS
from .runs import REPORT_FILES, Row, Run

PAGE_SIZES = (24, 48, 96, 192)
HIST_BINS = 20
MAX_FAILED_SHOWN = 500


def esc(text: Any) -> str:
    """HTML-escaped text (quotes too)."""
    return html.escape(str(text), quote=True)


def url(rel: str) -> str:
    """A relative file path as a relative URL: each part percent-encoded (``#``, ``%``, ``?``, spaces,
    non-ASCII), ``/`` kept."""
    return quote(rel.replace("\\", "/"), safe="/")


def script_json(data: Any) -> str:
    """JSON safe inside ``<script>``: ``<``, ``>`` and ``&`` escaped (no ``</script>`` can end the block)."""
    s = json.dumps(data, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _finite(v: Optional[float]) -> Optional[float]:
    return v if v is not None and math.isfinite(v) else None


def _r(v: Optional[float], digits: int = 4) -> Optional[float]:
    v = _finite(v)
    return None if v is None else round(v, digits)


def row_data(row: Row, made: Optional[Dict[str, Any]], metrics: Sequence[str]) -> List[Any]:
    """One row as the script reads it (see ``assets.JS``: index 0 name ... 15 view classes)."""
    n = list(made["n"]) if made else [0] * len(row.views)
    fg = made.get("fg") if made else row.fg
    agree = made.get("agree") if made else row.agree
    notes = "; ".join(made.get("notes") or []) if made else ""
    ok = row.status == "ok"
    error = row.error if not ok else (None if any(n) else (notes or "no maps could be drawn"))
    links = [[url(f) for f in fs] for fs in row.links] if any(row.links) else 0
    return [row.name, 1 if ok else 0, row.truth, row.pred, _r(row.conf, 6), _r(fg), _r(agree),
            [_r(row.metrics.get(m), 6) for m in metrics], row.key, n, 1 if made and made.get("fg") is not None else 0,
            1 if made and made.get("photo") else 0, links, error, notes or None,
            [v.classes if v is not None else [] for v in row.views]]


def histogram_svg(values: Sequence[float], bins: int = HIST_BINS, width: int = 360, height: int = 120) -> str:
    """An inline SVG histogram of values in [0, 1] (``bins`` equal bins)."""
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, max(0, int(v * bins)))] += 1
    top = max(counts) or 1
    bw = width / bins
    bars = "".join(
        f'<rect x="{i * bw:.1f}" y="{height - 16 - (c / top) * (height - 28):.1f}" width="{bw - 1:.1f}" '
        f'height="{(c / top) * (height - 28):.1f}" fill="#3e7bfa"><title>{i / bins:.2f}-{(i + 1) / bins:.2f}: '
        f"{c}</title></rect>" for i, c in enumerate(counts))
    ticks = "".join(f'<text x="{t * width:.0f}" y="{height - 3}" text-anchor="middle">{t:g}</text>'
                    for t in (0, 0.25, 0.5, 0.75, 1))
    return (f'<svg class="hist" width="{width + 12}" height="{height}" viewBox="-6 0 {width + 12} {height}" '
            f'role="img" aria-label="foreground share histogram">{bars}{ticks}'
            f'<text x="0" y="10">max {top}</text></svg>')


def _class_table(run: Run) -> str:
    truth = Counter(c for r in run.rows for c in set(r.truth))
    pred = Counter(r.pred[0] for r in run.rows if r.pred)
    used = sorted(set(truth) | set(pred), key=lambda c: (-(truth[c] + pred[c]), c))
    if not used:
        return "<p>no classes recorded</p>"
    rows = "".join(f'<tr><td>{esc(run.classes[c] if 0 <= c < len(run.classes) else c)}</td>'
                   f'<td class="n">{truth[c] or ""}</td><td class="n">{pred[c] or ""}</td></tr>' for c in used)
    return ('<div class="scroll"><table class="t" id="class-counts"><tr><th>class</th><th>true</th>'
            f"<th>predicted (top-1)</th></tr>{rows}</table></div>")


def _failed_table(run: Run, data: Sequence[List[Any]]) -> str:
    bad = [(d[0], d[13]) for d in data if d[13]]
    if not bad:
        return "<p>none</p>"
    rows = "".join(f"<tr><td>{esc(n)}</td><td>{esc(e)}</td></tr>" for n, e in bad[:MAX_FAILED_SHOWN])
    more = f"<p>and {len(bad) - MAX_FAILED_SHOWN} more (status filter: failed)</p>" if len(bad) > MAX_FAILED_SHOWN else ""
    return f'<div class="scroll"><table class="t" id="failed"><tr><th>image</th><th>error</th></tr>{rows}</table></div>{more}'


def _kv(items: Dict[str, Any]) -> str:
    def show(v: Any) -> str:
        if isinstance(v, (dict, list)):
            return json.dumps(v, ensure_ascii=False)
        return str(v)
    return '<dl class="kv">' + "".join(f"<dt>{esc(k)}</dt><dd>{esc(show(v))}</dd>" for k, v in items.items()) + "</dl>"


def provenance(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """How this page was made: camkit's version, the command, the date, Python."""
    try:
        from importlib.metadata import version

        ver = version("camkit")
    except Exception:  # not installed as a distribution
        ver = "unknown"
    return {"camkit": ver, "command": " ".join(["camkit", *(sys.argv[1:] if argv is None else argv)]),
            "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "python": platform.python_version()}


def summary_html(run: Run, data: Sequence[List[Any]], made_info: Dict[str, Any]) -> str:
    """The summary block: counts, per-class counts, foreground histogram, failures, settings, provenance."""
    ok = sum(1 for d in data if d[1])
    fgs = [d[5] for d in data if d[5] is not None]
    settings = {k: (f"{len(v)} classes" if k == "categories" and isinstance(v, list) else v)
                for k, v in run.settings.items()}
    hist = (histogram_svg(fgs) + f"<p>{len(fgs)} masks; median {sorted(fgs)[len(fgs) // 2]:.3f}</p>"
            if fgs else "<p>no pseudo-masks in this run</p>")
    return (
        '<details class="summary" open><summary>Summary</summary>'
        f'<p id="totals">{len(data)} images: {ok} ok, {len(data) - ok} failed; methods: '
        f"{esc(', '.join(run.methods) or 'none')}; {len(run.classes)} classes; confidence is the "
        f"{esc(run.confidence)} of the first target</p>"
        '<div class="cols">'
        f"<div><h3>Classes</h3>{_class_table(run)}</div>"
        f"<div><h3>Foreground share of the pseudo-masks</h3>{hist}</div>"
        f"<div><h3>Failed images</h3>{_failed_table(run, data)}</div>"
        "</div>"
        f'<details class="inner" id="settings"><summary>Run settings ({len(settings)}) and this page</summary>'
        f'<div class="cols"><div>{_kv(settings) if settings else "<p>not recorded</p>"}</div>'
        f"<div>{_kv(made_info)}</div></div></details>"
        "</details>")


def _options(values: Sequence[Any], labels: Sequence[str]) -> str:
    return "".join(f'<option value="{esc(v)}">{esc(t)}</option>' for v, t in zip(values, labels))


def controls_html(run: Run, data: Sequence[List[Any]], metrics: Sequence[str], page_size: int) -> str:
    """The filter, search, sort and paging bar."""
    def class_opts(col: int, top1: bool) -> str:
        cnt = Counter(c for d in data for c in (d[col][:1] if top1 else set(d[col])))
        used = sorted(cnt, key=lambda c: str(run.classes[c]).lower() if 0 <= c < len(run.classes) else "")
        return _options([-1] + used, ["any"] + [f"{run.classes[c]} ({cnt[c]})" for c in used])
    sorts = [("order", "file order"), ("name", "name")]
    sorts += [("conf", f"confidence ({run.confidence})")] if any(d[4] is not None for d in data) else []
    sorts += [("fg", "foreground share")] if any(d[5] is not None for d in data) else []
    sorts += [("agree", "method agreement")] if any(d[6] is not None for d in data) else []
    sorts += [(f"m:{i}", m) for i, m in enumerate(metrics)]
    sizes = sorted(set(PAGE_SIZES) | {page_size})
    return (
        '<div class="bar">'
        '<label>search <input type="search" id="q" placeholder="file name"></label>'
        f'<label>true class <select id="f-true">{class_opts(2, False)}</select></label>'
        f'<label>predicted <select id="f-pred">{class_opts(3, True)}</select></label>'
        '<label>status <select id="f-status"><option value="all">all</option><option value="ok">ok</option>'
        '<option value="failed">failed</option></select></label>'
        f'<label>sort <select id="sort">{_options(*zip(*sorts))}</select></label>'
        '<select id="dir" aria-label="direction"><option value="-1">high first</option>'
        '<option value="1">low first</option></select>'
        '<label><input type="checkbox" id="masks"> pseudo-masks</label>'
        f'<label>per page <select id="size">{_options(sizes, [str(s) for s in sizes])}</select></label>'
        '<span id="count"></span></div>')


def page_html(run: Run, made: Dict[str, Any], made_info: Dict[str, Any], page_size: int = 48,
              title: Optional[str] = None) -> str:
    """The whole page: inline style, summary, controls, grid, enlarged view, data and script."""
    metrics = sorted({m for r in run.rows for m in r.metrics})
    data = [row_data(r, made.get(r.key), metrics) for r in run.rows]
    blob = {"rows": data, "methods": run.methods, "classes": run.classes, "metrics": metrics,
            "files": REPORT_FILES, "pageSize": page_size, "confIsProb": run.confidence == "probability"}
    title = title or f"camkit report: {run.folder.resolve().name}"
    legend = " | ".join(run.methods) + (" | pseudo-mask (toggle)" if any(d[10] for d in data) else "")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="icon" href="data:,"><title>{esc(title)}</title><style>{CSS}</style></head><body>'
        f'<header><h1>{esc(title)}</h1><div class="sub">{esc(run.kind)} run in {esc(run.folder)}; '
        f"{len(data)} images</div></header><main>"
        f"{summary_html(run, data, made_info)}{controls_html(run, data, metrics, page_size)}"
        f'<p class="legend">each card, left to right: {esc(legend)}; click to enlarge (every target, the photo '
        "and the mask; arrow keys: next, previous; Esc: close)</p>"
        '<div id="grid"></div><div class="pager"><button id="prev">previous</button><span id="pageno"></span>'
        '<button id="next">next</button></div></main>'
        '<div id="modal" hidden><div class="box"><button id="m-close" aria-label="close">\u00d7</button>'
        '<h2 id="m-title"></h2><div id="m-info"></div><div id="m-views"></div></div></div>'
        f'<script type="application/json" id="camkit-data">{script_json(blob)}</script>'
        f"<script>{JS}</script></body></html>\n")
