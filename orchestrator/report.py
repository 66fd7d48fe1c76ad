"""The study's Pareto report: a trials table computed first, then drawn as CSV, Parquet, PNG and HTML.

:func:`build_front` turns trial records (:class:`~orchestrator.records.TrialRecord`) into a :class:`FrontData`:
the trials table of :func:`~orchestrator.records.trials_table` plus the finished trials in finish order and the
hypervolume history; the writers below only draw it. Nothing here talks to MLflow or Ray, so the report can be
rebuilt from any source of trial records (the tracker, a test, a notebook).

Only finished trials take part in the front, the ranks and the hypervolume (docs/design.md, "The front").
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .names import CONFIG_PREFIX, MAXIMIZE, OBJECTIVES
from .pareto import hypervolume_history
from .records import TrialRecord, finished, trials_table

# Above this many finished trials the PNG labels only the front, to stay readable.
MAX_LABELLED = 40
REPORT_FILES = ("front.csv", "trials.parquet", "front.png", "front.html", "hypervolume.png")


@dataclass(frozen=True)
class FrontData:
    """Everything the report draws.

    ``trials`` is the trials table (:func:`~orchestrator.records.trials_table`), one row per trial of any status;
    ``finished`` is its finished rows in finish order (then input order) and ``hypervolume[k]`` the hypervolume
    of the first ``k + 1`` of them against ``reference``.
    """

    trials: pd.DataFrame
    finished: pd.DataFrame
    hypervolume: np.ndarray  # (n_finished,)
    reference: tuple[float, float]
    title: str = ""

    @property
    def front(self) -> pd.DataFrame:
        """The non-dominated finished trials, best clean accuracy first."""
        front = self.finished[self.finished["pareto"]]
        return front.sort_values(["clean_acc", "robust_acc"], ascending=False, kind="stable")

    @property
    def param_columns(self) -> list[str]:
        """The ``config/*`` columns, sorted."""
        return sorted(c for c in self.trials.columns if c.startswith(CONFIG_PREFIX))


def build_front(
    records: Sequence[TrialRecord], reference: Sequence[float] = (0.0, 0.0), title: str = ""
) -> FrontData:
    """Compute the trials table, the finish-ordered finished trials and the hypervolume history of ``records``."""
    ref = (float(reference[0]), float(reference[1]))
    trials = trials_table(records)
    done = finished(trials).copy()
    done["_input"] = np.arange(len(done))
    done = done.sort_values(["finish_order", "_input"], kind="stable", na_position="last").drop(columns="_input")
    points = done[list(OBJECTIVES)].to_numpy(dtype=float)  # (N, 2)
    history = hypervolume_history(points, ref, list(MAXIMIZE))
    return FrontData(trials, done.reset_index(drop=True), history, ref, title)


def write_report(data: FrontData, directory: str | Path) -> dict[str, Path]:
    """Write every report file (:data:`REPORT_FILES`) into ``directory``; returns name -> path."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in REPORT_FILES}
    data.front.to_csv(paths["front.csv"], index=False)
    data.trials.to_parquet(paths["trials.parquet"], index=False)
    plot_front(data, paths["front.png"])
    paths["front.html"].write_text(front_html(data), encoding="utf-8")
    plot_hypervolume(data, paths["hypervolume.png"])
    return paths


def plot_front(data: FrontData, path: str | Path) -> None:
    """PNG of every finished trial (clean vs robust accuracy), the front joined by a line, points labelled."""
    fig = Figure(figsize=(7.5, 5.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    fin = data.finished.dropna(subset=list(OBJECTIVES))
    dominated, front = fin[~fin["pareto"]], fin[fin["pareto"]].sort_values(["clean_acc", "robust_acc"])
    ax.scatter(dominated["clean_acc"], dominated["robust_acc"], s=30, c="#9e9e9e", label="dominated", zorder=2)
    ax.plot(front["clean_acc"], front["robust_acc"], "-", color="#d62728", lw=1.5, zorder=1)
    ax.scatter(front["clean_acc"], front["robust_acc"], s=45, c="#d62728", label="Pareto front", zorder=3)
    labelled = fin if len(fin) <= MAX_LABELLED else front
    for row in labelled.itertuples():
        ax.annotate(str(row.trial_id), (row.clean_acc, row.robust_acc), xytext=(4, 4),
                    textcoords="offset points", fontsize=7, color="#333333")
    ax.set_xlabel("clean accuracy (validation)")
    ax.set_ylabel("robust accuracy (validation, PGD)")
    ax.set_title(data.title or f"Pareto front: {len(front)} of {len(fin)} finished trials")
    ax.grid(True, alpha=0.3)
    if len(fin):
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def plot_hypervolume(data: FrontData, path: str | Path) -> None:
    """PNG of the hypervolume against the number of finished trials."""
    fig = Figure(figsize=(6.5, 4.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    steps = np.arange(1, len(data.hypervolume) + 1)
    ax.step(steps, data.hypervolume, where="post", color="#1f77b4")
    ax.plot(steps, data.hypervolume, "o", ms=3, color="#1f77b4")
    ax.set_xlabel("finished trials")
    ax.set_ylabel(f"hypervolume (reference {data.reference[0]:g}, {data.reference[1]:g})")
    ax.set_title("Hypervolume over the study")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


# --- HTML -----------------------------------------------------------------------------------------------------

_W, _H = 900, 560
_LEFT, _RIGHT, _TOP, _BOTTOM = 70, 30, 30, 55

_CSS = """
body { font-family: system-ui, sans-serif; margin: 16px; color: #222; }
h1 { font-size: 18px; margin: 0 0 4px; } p.sub { margin: 0 0 8px; color: #555; font-size: 13px; }
svg { background: #fff; border: 1px solid #ddd; }
circle { cursor: pointer; stroke: #fff; stroke-width: 1; }
circle.front { fill: #d62728; } circle.dominated { fill: #9e9e9e; }
circle:hover, circle.hl { stroke: #000; stroke-width: 2; }
.axis { stroke: #444; } .grid { stroke: #eee; } .tick { font-size: 11px; fill: #444; }
.label { font-size: 10px; fill: #333; pointer-events: none; }
#tip { position: fixed; display: none; background: #fffff0; border: 1px solid #888; padding: 6px 8px;
       font-size: 12px; max-width: 420px; pointer-events: none; box-shadow: 2px 2px 6px rgba(0,0,0,.2); }
#tip table, table.front { border-collapse: collapse; } #tip td { padding: 0 6px 0 0; vertical-align: top; }
table.front { margin-top: 12px; font-size: 12px; } table.front td, table.front th { border: 1px solid #ddd;
       padding: 2px 6px; text-align: left; }
"""

_JS = """
(function () {
  var tip = document.getElementById('tip');
  function row(k, v) {
    var tr = document.createElement('tr'), a = document.createElement('td'), b = document.createElement('td');
    a.textContent = k; b.textContent = v; tr.appendChild(a); tr.appendChild(b); return tr;
  }
  function show(ev) {
    var c = ev.currentTarget, t = document.createElement('table');
    t.appendChild(row('trial', c.dataset.trialId));
    t.appendChild(row('clean_acc', c.dataset.clean));
    t.appendChild(row('robust_acc', c.dataset.robust));
    t.appendChild(row('pareto rank', c.dataset.rank));
    var params = JSON.parse(c.dataset.params || '{}');
    Object.keys(params).sort().forEach(function (k) { t.appendChild(row(k, params[k])); });
    tip.replaceChildren(t);
    tip.style.display = 'block';
    move(ev);
  }
  function move(ev) {  // keep the box inside the window
    var x = ev.clientX + 14, y = ev.clientY + 14;
    if (x + tip.offsetWidth > window.innerWidth) { x = ev.clientX - tip.offsetWidth - 14; }
    if (y + tip.offsetHeight > window.innerHeight) { y = ev.clientY - tip.offsetHeight - 14; }
    tip.style.left = Math.max(0, x) + 'px'; tip.style.top = Math.max(0, y) + 'px';
  }
  function hide() { tip.style.display = 'none'; }
  document.querySelectorAll('circle[data-trial-id]').forEach(function (c) {
    c.addEventListener('mouseenter', show); c.addEventListener('mousemove', move);
    c.addEventListener('mouseleave', hide);
  });
  document.body.setAttribute('data-ready', 'true');
})();
"""


def _axis_range(values: np.ndarray) -> tuple[float, float]:
    """A padded [lo, hi] around finite ``values`` (a default when there are none or they are equal)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    pad = (hi - lo) * 0.08 if hi > lo else max(abs(hi) * 0.05, 0.05)
    return lo - pad, hi + pad


def _ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    """About ``n`` round tick values in [lo, hi]."""
    raw = (hi - lo) / max(n - 1, 1)
    step = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 2.5, 5, 10):
        if raw <= mult * step:
            step *= mult
            break
    first = math.ceil(lo / step) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step) + 1)]


def front_html(data: FrontData) -> str:
    """A self-contained page (inline SVG, CSS and JS; nothing fetched) with one circle per finished trial.

    Each circle carries ``data-trial-id``, ``data-clean``, ``data-robust``, ``data-rank`` and ``data-params``
    (JSON); hovering shows them. Trials with a NaN objective cannot be placed and are listed under the plot.
    """
    fin = data.finished
    placed = fin.dropna(subset=list(OBJECTIVES))
    x0, x1 = _axis_range(placed["clean_acc"].to_numpy(dtype=float))
    y0, y1 = _axis_range(placed["robust_acc"].to_numpy(dtype=float))

    def sx(v: float) -> float:
        return _LEFT + (v - x0) / (x1 - x0) * (_W - _LEFT - _RIGHT)

    def sy(v: float) -> float:
        return _H - _BOTTOM - (v - y0) / (y1 - y0) * (_H - _TOP - _BOTTOM)

    parts = [f'<svg id="front" xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" '
             f'viewBox="0 0 {_W} {_H}" role="img" aria-label="Pareto front">']
    for t in _ticks(x0, x1):
        parts.append(f'<line class="grid" x1="{sx(t):.1f}" y1="{_TOP}" x2="{sx(t):.1f}" y2="{_H - _BOTTOM}"/>'
                     f'<text class="tick" x="{sx(t):.1f}" y="{_H - _BOTTOM + 16}" text-anchor="middle">{t:g}</text>')
    for t in _ticks(y0, y1):
        parts.append(f'<line class="grid" x1="{_LEFT}" y1="{sy(t):.1f}" x2="{_W - _RIGHT}" y2="{sy(t):.1f}"/>'
                     f'<text class="tick" x="{_LEFT - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
    parts.append(f'<line class="axis" x1="{_LEFT}" y1="{_H - _BOTTOM}" x2="{_W - _RIGHT}" y2="{_H - _BOTTOM}"/>'
                 f'<line class="axis" x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{_H - _BOTTOM}"/>'
                 f'<text class="tick" x="{(_W + _LEFT - _RIGHT) / 2}" y="{_H - 12}" text-anchor="middle">'
                 'clean accuracy (validation)</text>'
                 f'<text class="tick" transform="translate(18 {(_H + _TOP - _BOTTOM) / 2}) rotate(-90)" '
                 'text-anchor="middle">robust accuracy (validation, PGD)</text>')
    front = placed[placed["pareto"]].sort_values(["clean_acc", "robust_acc"])
    if len(front) > 1:
        pts = " ".join(f"{sx(r.clean_acc):.1f},{sy(r.robust_acc):.1f}" for r in front.itertuples())
        parts.append(f'<polyline points="{pts}" fill="none" stroke="#d62728" stroke-width="1.5"/>')
    labelled = len(placed) <= MAX_LABELLED
    params = data.param_columns
    # Dominated first so that front points are drawn on top.
    for row in placed.sort_values("pareto", kind="stable").to_dict("records"):
        parts.append(_circle(row, params, sx(row["clean_acc"]), sy(row["robust_acc"])))
        if labelled or row["pareto"]:
            parts.append(f'<text class="label" x="{sx(row["clean_acc"]) + 7:.1f}" '
                         f'y="{sy(row["robust_acc"]) - 6:.1f}">{html.escape(str(row["trial_id"]))}</text>')
    parts.append("</svg>")
    return _page(data, "\n".join(parts), fin, placed)


def _missing(value: Any) -> bool:
    """An empty cell of a config column: absent, None, NaN or the empty string."""
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def _circle(row: Mapping[str, Any], params: list[str], cx: float, cy: float) -> str:
    """One trial's SVG circle with its data attributes (HTML-escaped)."""
    values = {c[len(CONFIG_PREFIX):]: str(row[c]) for c in params if not _missing(row.get(c))}
    attrs = {
        "class": "front" if row["pareto"] else "dominated",
        "cx": f"{cx:.1f}", "cy": f"{cy:.1f}", "r": "7" if row["pareto"] else "6",
        "data-trial-id": str(row["trial_id"]),
        "data-clean": f"{row['clean_acc']:.4f}",
        "data-robust": f"{row['robust_acc']:.4f}",
        "data-rank": str(int(row["pareto_rank"])),
        "data-params": json.dumps(values, sort_keys=True),
    }
    body = " ".join(f'{k}="{html.escape(v, quote=True)}"' for k, v in attrs.items())
    return f"<circle {body}><title>{html.escape(str(row['trial_id']))}</title></circle>"


def _page(data: FrontData, svg: str, finished: pd.DataFrame, placed: pd.DataFrame) -> str:
    """The HTML document around ``svg``: heading, the plot, a front table and the inline script."""
    hv = float(data.hypervolume[-1]) if len(data.hypervolume) else 0.0
    title = html.escape(data.title or "Pareto front")
    sub = (f"{int(finished['pareto'].sum())} Pareto-optimal of {len(finished)} finished trials "
           f"({len(data.trials)} in all); hypervolume {hv:.4f} against "
           f"({data.reference[0]:g}, {data.reference[1]:g}). Hover a point for its parameters.")
    rows = "".join(
        f"<tr><td>{html.escape(str(r.trial_id))}</td><td>{r.clean_acc:.4f}</td><td>{r.robust_acc:.4f}</td>"
        f"<td>{html.escape(str(r.model_uri))}</td></tr>" for r in data.front.itertuples())
    missing = len(finished) - len(placed)
    note = f"<p class='sub'>{missing} finished trial(s) with a NaN objective are not plotted.</p>" if missing else ""
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{title}</title><style>{_CSS}</style></head>\n<body>\n"
        f"<h1>{title}</h1><p class='sub'>{html.escape(sub)}</p>\n{svg}\n{note}"
        "<table class='front'><tr><th>trial</th><th>clean_acc</th><th>robust_acc</th><th>model</th></tr>"
        f"{rows}</table>\n<div id='tip'></div>\n<script>{_JS}</script>\n</body></html>\n"
    )
