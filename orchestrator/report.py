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

from .names import CONFIG_PREFIX, MAXIMIZE, OBJECTIVES, Status
from .pareto import hypervolume_history, nondominated_ranks, pareto_mask, staircase
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
    def stopped(self) -> pd.DataFrame:
        """Trials the scheduler stopped early, at their last (not final) figures: drawn apart, never on the front."""
        stopped = self.trials[self.trials["status"] == Status.STOPPED]
        return stopped.dropna(subset=list(OBJECTIVES))

    @property
    def param_columns(self) -> list[str]:
        """The ``config/*`` columns, sorted."""
        return sorted(c for c in self.trials.columns if c.startswith(CONFIG_PREFIX))


def build_front(
    records: Sequence[TrialRecord], reference: Sequence[float] = (0.0, 0.0), title: str = "",
    masking_threshold: float | None = None,
) -> FrontData:
    """Compute the trials table, the finish-ordered finished trials and the hypervolume history of ``records``."""
    ref = (float(reference[0]), float(reference[1]))
    trials = trials_table(records, masking_threshold)
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


FRONT_COLOR, DOMINATED_COLOR, SUSPECT_COLOR, VERIFIED_COLOR = "#d62728", "#9e9e9e", "#ff7f0e", "#1f77b4"


def plot_front(data: FrontData, path: str | Path) -> None:
    """PNG of :func:`front_figure`."""
    front_figure(data).savefig(path)


def front_figure(data: FrontData) -> Figure:
    """Every finished trial (clean vs robust accuracy): the front as its staircase (the attainment surface),
    stopped trials hollow at their last figures, gradient-masking suspects ringed, points labelled."""
    fig = Figure(figsize=(7.5, 5.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    fin = data.finished.dropna(subset=list(OBJECTIVES))
    dominated, front = fin[~fin["pareto"]], fin[fin["pareto"]]
    steps = staircase(front[list(OBJECTIVES)].to_numpy(dtype=float))
    ax.plot(steps[:, 0], steps[:, 1], "-", color=FRONT_COLOR, lw=1.5, zorder=1)
    ax.scatter(dominated["clean_acc"], dominated["robust_acc"], s=30, c=DOMINATED_COLOR, label="dominated", zorder=2)
    ax.scatter(front["clean_acc"], front["robust_acc"], s=45, c=FRONT_COLOR, label="Pareto front", zorder=3)
    stopped = data.stopped
    if len(stopped):
        ax.scatter(stopped["clean_acc"], stopped["robust_acc"], s=30, facecolors="none", edgecolors=DOMINATED_COLOR,
                   label="stopped early (last rung's figures)", zorder=2)
    suspects = fin[fin["masking_suspect"]]
    if len(suspects):
        ax.scatter(suspects["clean_acc"], suspects["robust_acc"], s=160, facecolors="none", edgecolors=SUSPECT_COLOR,
                   linewidths=1.5, label="gradient masking suspect", zorder=4)
    labelled = fin if len(fin) <= MAX_LABELLED else front
    for row in labelled.itertuples():
        ax.annotate(str(row.trial_id), (row.clean_acc, row.robust_acc), xytext=(4, 4),
                    textcoords="offset points", fontsize=7, color="#333333")
    ax.set_xlabel("clean accuracy (validation)")
    ax.set_ylabel("robust accuracy (validation, the study's objective)")
    ax.set_title(data.title or f"Pareto front: {len(front)} of {len(fin)} finished trials")
    ax.grid(True, alpha=0.3)
    if len(fin) or len(stopped):
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig


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
circle.front { fill: #d62728; } circle.dominated { fill: #9e9e9e; } circle.verified { fill: #1f77b4; }
circle.search { fill: #fff; stroke: #d62728; stroke-width: 1.5; }
circle.stopped { fill: #fff; stroke: #9e9e9e; stroke-width: 1.5; } circle.suspect { stroke: #ff7f0e; stroke-width: 3; }
polyline.front { fill: none; stroke: #d62728; stroke-width: 1.5; }
polyline.search-front { fill: none; stroke: #d62728; stroke-width: 1.5; stroke-dasharray: 5 4; }
polyline.verified-front { fill: none; stroke: #1f77b4; stroke-width: 2; }
line.link { stroke: #bbb; stroke-width: 1; } .legend { font-size: 11px; fill: #333; }
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
    var info = JSON.parse(c.dataset.info || '[]');
    info.forEach(function (kv) { t.appendChild(row(kv[0], kv[1])); });
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
  document.querySelectorAll('circle[data-info]').forEach(function (c) {
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


class _Canvas:
    """An SVG plot area with axes fitted to some points; draws grid, ticks, labels, lines and circles."""

    def __init__(self, xs: np.ndarray, ys: np.ndarray) -> None:
        self.x0, self.x1 = _axis_range(xs)
        self.y0, self.y1 = _axis_range(ys)

    def sx(self, v: float) -> float:
        return _LEFT + (v - self.x0) / (self.x1 - self.x0) * (_W - _LEFT - _RIGHT)

    def sy(self, v: float) -> float:
        return _H - _BOTTOM - (v - self.y0) / (self.y1 - self.y0) * (_H - _TOP - _BOTTOM)

    def frame(self, x_label: str, y_label: str) -> list[str]:
        parts = []
        for t in _ticks(self.x0, self.x1):
            parts.append(f'<line class="grid" x1="{self.sx(t):.1f}" y1="{_TOP}" x2="{self.sx(t):.1f}" '
                         f'y2="{_H - _BOTTOM}"/><text class="tick" x="{self.sx(t):.1f}" y="{_H - _BOTTOM + 16}" '
                         f'text-anchor="middle">{t:g}</text>')
        for t in _ticks(self.y0, self.y1):
            parts.append(f'<line class="grid" x1="{_LEFT}" y1="{self.sy(t):.1f}" x2="{_W - _RIGHT}" '
                         f'y2="{self.sy(t):.1f}"/><text class="tick" x="{_LEFT - 6}" y="{self.sy(t) + 4:.1f}" '
                         f'text-anchor="end">{t:g}</text>')
        parts.append(f'<line class="axis" x1="{_LEFT}" y1="{_H - _BOTTOM}" x2="{_W - _RIGHT}" y2="{_H - _BOTTOM}"/>'
                     f'<line class="axis" x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{_H - _BOTTOM}"/>'
                     f'<text class="tick" x="{(_W + _LEFT - _RIGHT) / 2}" y="{_H - 12}" text-anchor="middle">'
                     f'{html.escape(x_label)}</text>'
                     f'<text class="tick" transform="translate(18 {(_H + _TOP - _BOTTOM) / 2}) rotate(-90)" '
                     f'text-anchor="middle">{html.escape(y_label)}</text>')
        return parts

    def polyline(self, points: np.ndarray, cls: str) -> str:
        """A polyline through ``points`` (K, 2) in data units; empty when there are fewer than two."""
        if len(points) < 2:
            return ""
        pts = " ".join(f"{self.sx(x):.1f},{self.sy(y):.1f}" for x, y in points)
        return f'<polyline class="{cls}" points="{pts}"/>'

    def link(self, a: tuple[float, float], b: tuple[float, float]) -> str:
        return (f'<line class="link" x1="{self.sx(a[0]):.1f}" y1="{self.sy(a[1]):.1f}" x2="{self.sx(b[0]):.1f}" '
                f'y2="{self.sy(b[1]):.1f}"/>')

    def label(self, x: float, y: float, text: str) -> str:
        return f'<text class="label" x="{self.sx(x) + 7:.1f}" y="{self.sy(y) - 6:.1f}">{html.escape(text)}</text>'

    def circle(self, x: float, y: float, cls: str, radius: float, attrs: Mapping[str, str], title: str) -> str:
        """A circle with ``data-*`` attributes (escaped); the page's script shows ``data-info`` and
        ``data-params`` on hover."""
        body = " ".join(f'{k}="{html.escape(v, quote=True)}"' for k, v in
                        {"class": cls, "cx": f"{self.sx(x):.1f}", "cy": f"{self.sy(y):.1f}", "r": f"{radius:g}",
                         **attrs}.items())
        return f"<circle {body}><title>{html.escape(title)}</title></circle>"

    def legend(self, entries: Sequence[tuple[str, str, str]]) -> str:
        """Swatches (fill, stroke, text) in the top-right corner (squares, so they never count as points)."""
        parts = []
        for i, (fill, stroke, text) in enumerate(entries):
            y = _TOP + 12 + 16 * i
            parts.append(f'<rect x="{_W - _RIGHT - 196}" y="{y - 9}" width="10" height="10" '
                         f'style="fill:{fill};stroke:{stroke};stroke-width:2"/>'
                         f'<text class="legend" x="{_W - _RIGHT - 180}" y="{y}">{html.escape(text)}</text>')
        return "".join(parts)

    def svg(self, parts: Sequence[str], label: str) -> str:
        head = (f'<svg id="front" xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" '
                f'viewBox="0 0 {_W} {_H}" role="img" aria-label="{html.escape(label)}">')
        return "\n".join([head, *[p for p in parts if p], "</svg>"])


def _params(row: Mapping[str, Any], columns: Sequence[str]) -> str:
    """The row's non-empty ``config/*`` values as JSON (key without the prefix -> text)."""
    return json.dumps({c[len(CONFIG_PREFIX):]: str(row[c]) for c in columns if not _missing(row.get(c))},
                      sort_keys=True)


def _missing(value: Any) -> bool:
    """An empty cell of a config column: absent, None, NaN or the empty string."""
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def front_html(data: FrontData) -> str:
    """A self-contained page (inline SVG, CSS and JS; nothing fetched) with one circle per finished trial.

    The front is drawn as its staircase. Each circle carries ``data-trial-id``, ``data-clean``, ``data-robust``,
    ``data-rank``, ``data-info`` and ``data-params`` (JSON); hovering shows them. Gradient-masking suspects are
    ringed. Trials with a NaN objective cannot be placed and are listed under the plot.
    """
    fin = data.finished
    placed = fin.dropna(subset=list(OBJECTIVES))
    stopped = data.stopped
    canvas = _Canvas(np.concatenate([placed["clean_acc"], stopped["clean_acc"]]).astype(float),
                     np.concatenate([placed["robust_acc"], stopped["robust_acc"]]).astype(float))
    parts = canvas.frame("clean accuracy (validation)", "robust accuracy (validation, the study's objective)")
    front = placed[placed["pareto"]]
    parts.append(canvas.polyline(staircase(front[list(OBJECTIVES)].to_numpy(dtype=float)), "front"))
    labelled = len(placed) <= MAX_LABELLED
    params = data.param_columns
    # Dominated first so that front points are drawn on top.
    for row in placed.sort_values("pareto", kind="stable").to_dict("records"):
        info = [["trial", str(row["trial_id"])], ["clean_acc", f"{row['clean_acc']:.4f}"],
                ["robust_acc", f"{row['robust_acc']:.4f}"], ["pareto rank", str(int(row["pareto_rank"]))]]
        if not _missing(row.get("masking_gap")):
            info.append(["masking gap", f"{row['masking_gap']:.4f}" + (" (suspect)" if row["masking_suspect"] else "")])
        cls = ("front" if row["pareto"] else "dominated") + (" suspect" if row["masking_suspect"] else "")
        parts.append(canvas.circle(row["clean_acc"], row["robust_acc"], cls, 7 if row["pareto"] else 6, {
            "data-trial-id": str(row["trial_id"]), "data-clean": f"{row['clean_acc']:.4f}",
            "data-robust": f"{row['robust_acc']:.4f}", "data-rank": str(int(row["pareto_rank"])),
            "data-info": json.dumps(info), "data-params": _params(row, params)}, str(row["trial_id"])))
        if labelled or row["pareto"]:
            parts.append(canvas.label(row["clean_acc"], row["robust_acc"], str(row["trial_id"])))
    for row in data.stopped.to_dict("records"):
        info = [["trial", str(row["trial_id"])], ["stopped at epoch", f"{row.get('epoch', float('nan')):g}"],
                ["clean_acc", f"{row['clean_acc']:.4f}"], ["robust_acc", f"{row['robust_acc']:.4f}"]]
        parts.append(canvas.circle(row["clean_acc"], row["robust_acc"], "stopped", 5, {
            "data-stopped-id": str(row["trial_id"]), "data-info": json.dumps(info),
            "data-params": _params(row, params)}, f"{row['trial_id']} (stopped)"))
    legend = [(FRONT_COLOR, "#fff", "Pareto front"), (DOMINATED_COLOR, "#fff", "dominated")]
    if len(data.stopped):
        legend.append(("#fff", DOMINATED_COLOR, "stopped early (last rung's figures)"))
    if placed["masking_suspect"].any():
        legend.append(("#fff", SUSPECT_COLOR, "gradient masking suspect"))
    if len(placed) or len(stopped):
        parts.append(canvas.legend(legend))
    return _page(data, canvas.svg(parts, "Pareto front"), fin, placed)


def _page(data: FrontData, svg: str, finished: pd.DataFrame, placed: pd.DataFrame) -> str:
    """The HTML document around ``svg``: heading, the plot, a front table and the inline script."""
    hv = float(data.hypervolume[-1]) if len(data.hypervolume) else 0.0
    sub = (f"{int(finished['pareto'].sum())} Pareto-optimal of {len(finished)} finished trials "
           f"({len(data.trials)} in all); hypervolume {hv:.4f} against "
           f"({data.reference[0]:g}, {data.reference[1]:g}). Hover a point for its parameters.")
    missing = len(finished) - len(placed)
    note = f"{missing} finished trial(s) with a NaN objective are not plotted." if missing else ""
    rows = [[str(r.trial_id), f"{r.clean_acc:.4f}", f"{r.robust_acc:.4f}", str(r.model_uri)]
            for r in data.front.itertuples()]
    return html_page(data.title or "Pareto front", sub, svg, ["trial", "clean_acc", "robust_acc", "model"], rows,
                     note)


def html_page(title: str, subtitle: str, svg: str, header: Sequence[str], rows: Sequence[Sequence[str]],
              note: str = "") -> str:
    """A self-contained HTML page: heading, the SVG plot, an optional note, a table, the hover script."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    note_html = f"<p class='sub'>{html.escape(note)}</p>" if note else ""
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1><p class='sub'>{html.escape(subtitle)}</p>\n{svg}\n{note_html}"
        f"<table class='front'><tr>{head}</tr>{body}</table>\n<div id='tip'></div>\n<script>{_JS}</script>\n"
        "</body></html>\n"
    )


# --- the verified front -----------------------------------------------------------------------------------------

VERIFIED_FILES = ("verified_front.png", "verified_front.html")


@dataclass(frozen=True)
class VerifiedFront:
    """A study's verified trials, their search and verified figures, and both fronts.

    ``trials`` has one row per verified trial: ``trial_id``, ``search_clean_acc``, ``search_robust_acc``,
    ``search_pareto`` (on the study's search front), ``clean_acc`` and ``aa_acc`` (the verified figures),
    ``verified_pareto`` and ``verified_rank`` (the front and non-dominated ranks over the verified figures of the
    trials verified without error; -1 for the others) and ``config/*`` columns. ``search_front`` holds the search
    objectives (N, 2) of the whole study's front, verified or not.
    """

    trials: pd.DataFrame
    search_front: np.ndarray
    split: str
    version: str
    title: str = ""

    @property
    def front(self) -> pd.DataFrame:
        return self.trials[self.trials["verified_pareto"]].sort_values("clean_acc", ascending=False)

    @property
    def left(self) -> list[str]:
        """Search-front trials that the verified figures push off the front."""
        t = self.trials
        return sorted(t.loc[t["search_pareto"] & ~t["verified_pareto"] & (t["verified_rank"] >= 0), "trial_id"])

    @property
    def joined(self) -> list[str]:
        """Trials dominated in the search that are on the verified front."""
        t = self.trials
        return sorted(t.loc[~t["search_pareto"] & t["verified_pareto"], "trial_id"])


def build_verified_front(verified: pd.DataFrame, trials: pd.DataFrame, *, split: str, version: str,
                         title: str = "") -> VerifiedFront:
    """Join verified figures (``trial_id``, ``clean_acc``, ``aa_acc``, ``error``) with the study's trials table
    and compute the verified front; a trial whose verification failed is kept with rank -1."""
    study = trials.set_index("trial_id")
    rows = verified[["trial_id", "clean_acc", "aa_acc"]].copy()
    rows["trial_id"] = rows["trial_id"].astype(str)
    ok = verified["error"].fillna("").astype(str).eq("").to_numpy()
    rows["search_clean_acc"] = rows["trial_id"].map(study["clean_acc"]).astype(float)
    rows["search_robust_acc"] = rows["trial_id"].map(study["robust_acc"]).astype(float)
    rows["search_pareto"] = rows["trial_id"].map(study["pareto"]).fillna(False).astype(bool)
    points = rows[["clean_acc", "aa_acc"]].to_numpy(dtype=float).copy()  # (N, 2)
    points[~ok] = np.nan
    rows["verified_pareto"] = pareto_mask(points, list(MAXIMIZE))
    rows["verified_rank"] = nondominated_ranks(points, list(MAXIMIZE))
    for column in (c for c in trials.columns if c.startswith(CONFIG_PREFIX)):
        rows[column] = rows["trial_id"].map(study[column])
    front = trials[trials["pareto"].astype(bool)][list(OBJECTIVES)].to_numpy(dtype=float)
    return VerifiedFront(rows.reset_index(drop=True), front, split, version, title)


def _verified_labels(vf: VerifiedFront) -> tuple[str, str]:
    return (f"clean accuracy (search: validation; verified: {vf.split})",
            f"robust accuracy (search: the study's objective; verified: AutoAttack {vf.version})")


def plot_verified(vf: VerifiedFront, path: str | Path) -> None:
    """PNG of :func:`verified_figure`."""
    verified_figure(vf).savefig(path)


def verified_figure(vf: VerifiedFront) -> Figure:
    """The search front and the verified front as staircases, each verified trial's search point joined to its
    verified point."""
    fig = Figure(figsize=(7.5, 5.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    t = vf.trials.dropna(subset=["clean_acc", "aa_acc"])
    search = staircase(vf.search_front)
    ax.plot(search[:, 0], search[:, 1], "--", color=FRONT_COLOR, lw=1.2, label="search front", zorder=1)
    verified = staircase(t[t["verified_rank"] >= 0][["clean_acc", "aa_acc"]].to_numpy(dtype=float))
    ax.plot(verified[:, 0], verified[:, 1], "-", color=VERIFIED_COLOR, lw=1.8, label="verified front", zorder=1)
    for row in t.itertuples():
        ax.plot([row.search_clean_acc, row.clean_acc], [row.search_robust_acc, row.aa_acc], "-", color="#bbbbbb",
                lw=0.8, zorder=0)
        ax.annotate(str(row.trial_id), (row.clean_acc, row.aa_acc), xytext=(4, 4), textcoords="offset points",
                    fontsize=7, color="#333333")
    ax.scatter(t["search_clean_acc"], t["search_robust_acc"], s=35, facecolors="white", edgecolors=FRONT_COLOR,
               label="search figures", zorder=2)
    ax.scatter(t["clean_acc"], t["aa_acc"], s=40, c=np.where(t["verified_pareto"], VERIFIED_COLOR, DOMINATED_COLOR),
               label="verified figures (blue: on the verified front)", zorder=3)
    x_label, y_label = _verified_labels(vf)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(vf.title or f"Verified front: {int(t['verified_pareto'].sum())} of {len(t)} verified trials")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig


def verified_html(vf: VerifiedFront) -> str:
    """A self-contained page like :func:`front_html`: both fronts as staircases, each verified trial's hollow
    search point joined to its filled verified point; hover a point for its figures and parameters."""
    t = vf.trials.dropna(subset=["clean_acc", "aa_acc"])
    xs = np.concatenate([t["clean_acc"], t["search_clean_acc"], vf.search_front[:, 0]]).astype(float)
    ys = np.concatenate([t["aa_acc"], t["search_robust_acc"], vf.search_front[:, 1]]).astype(float)
    canvas = _Canvas(xs, ys)
    parts = canvas.frame(*_verified_labels(vf))
    parts.append(canvas.polyline(staircase(vf.search_front), "search-front"))
    parts.append(canvas.polyline(staircase(t[t["verified_rank"] >= 0][["clean_acc", "aa_acc"]].to_numpy(dtype=float)),
                                 "verified-front"))
    params = sorted(c for c in t.columns if c.startswith(CONFIG_PREFIX))
    for row in t.to_dict("records"):
        tid = str(row["trial_id"])
        info = [["trial", tid], ["search clean_acc", f"{row['search_clean_acc']:.4f}"],
                ["search robust_acc", f"{row['search_robust_acc']:.4f}"],
                [f"{vf.split} clean_acc", f"{row['clean_acc']:.4f}"],
                [f"{vf.split} AutoAttack ({vf.version})", f"{row['aa_acc']:.4f}"],
                ["verified rank", str(int(row["verified_rank"]))]]
        attrs = {"data-trial-id": tid, "data-info": json.dumps(info), "data-params": _params(row, params)}
        parts.append(canvas.link((row["search_clean_acc"], row["search_robust_acc"]), (row["clean_acc"], row["aa_acc"])))
        parts.append(canvas.circle(row["search_clean_acc"], row["search_robust_acc"], "search", 5,
                                   {**attrs, "data-kind": "search"}, f"{tid} (search)"))
        parts.append(canvas.circle(row["clean_acc"], row["aa_acc"], "verified" if row["verified_pareto"] else
                                   "dominated", 7, {**attrs, "data-kind": "verified"}, f"{tid} (verified)"))
        parts.append(canvas.label(row["clean_acc"], row["aa_acc"], tid))
    parts.append(canvas.legend([("#fff", FRONT_COLOR, "search figures"),
                                (VERIFIED_COLOR, "#fff", "verified, on the verified front"),
                                (DOMINATED_COLOR, "#fff", "verified, dominated")]))
    sub = (f"{len(vf.front)} of {len(t)} verified trials on the verified front ({vf.split} split, AutoAttack "
           f"{vf.version}); dashed: the search front; grey lines join a trial's search and verified figures.")
    notes = []
    if vf.left:
        notes.append(f"left the front when verified: {', '.join(vf.left)}")
    if vf.joined:
        notes.append(f"joined the front when verified: {', '.join(vf.joined)}")
    rows = [[str(r.trial_id), f"{r.search_clean_acc:.4f}", f"{r.search_robust_acc:.4f}", f"{r.clean_acc:.4f}",
             f"{r.aa_acc:.4f}"] for r in vf.front.itertuples()]
    return html_page(vf.title or "Verified front", sub, canvas.svg(parts, "verified front"),
                     ["trial", "search clean", "search robust", f"{vf.split} clean", f"{vf.split} AutoAttack"], rows,
                     "; ".join(notes))


def write_verified(vf: VerifiedFront, directory: str | Path) -> dict[str, Path]:
    """Write :data:`VERIFIED_FILES` into ``directory``; returns name -> path."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in VERIFIED_FILES}
    plot_verified(vf, paths["verified_front.png"])
    paths["verified_front.html"].write_text(verified_html(vf), encoding="utf-8")
    return paths
