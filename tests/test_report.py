"""orchestrator.report: the trials table against the Pareto kernels, the files it writes, and front.html in a browser.

The browser test renders ``front.html`` in headless Chromium, counts the trial circles in the DOM after its script
ran, and keeps a screenshot under ``test-output/`` (git-ignored). It is skipped only when Chromium is absent.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from orchestrator.names import Status
from orchestrator.pareto import hypervolume, hypervolume_history, nondominated_ranks, pareto_mask
from orchestrator.records import TrialRecord, epochs_summary, format_table
from orchestrator.report import (
    REPORT_FILES,
    build_front,
    build_verified_front,
    front_figure,
    front_html,
    verified_figure,
    verified_html,
    write_report,
)

OUTPUT_DIR = Path(__file__).resolve().parent.parent / "test-output"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _records(n: int = 12, seed: int = 0) -> list[TrialRecord]:
    """``n`` finished trials with random objectives (finish order reversed from input), a failure, a NaN one."""
    rng = np.random.default_rng(seed)
    records = [
        TrialRecord(f"t{i:02d}", Status.FINISHED, float(rng.uniform(0.6, 0.97)), float(rng.uniform(0.0, 0.3)),
                    run_id=f"run{i}", finish_order=n - i,
                    params={"arat.gamma": round(float(rng.uniform(1, 300)), 2), "attack.eps": 51})
        for i in range(n)
    ]
    records.append(TrialRecord("failed", Status.FAILED, params={"arat.gamma": 3.0}))
    records.append(TrialRecord("nan", Status.FINISHED, math.nan, 0.2, finish_order=n + 1,
                               params={"note": "<b>&\"quoted\"</b>"}))
    records.append(TrialRecord("running", Status.RUNNING))
    return records


def test_table_matches_the_kernels() -> None:
    records = _records()
    data = build_front(records, reference=(0.0, 0.0), title="t")
    finished = [r for r in records if r.status == Status.FINISHED]
    finished.sort(key=lambda r: r.finish_order)
    points = np.array([[r.clean_acc, r.robust_acc] for r in finished])
    assert list(data.finished["trial_id"]) == [r.trial_id for r in finished]
    assert data.finished["pareto"].tolist() == pareto_mask(points).tolist()
    assert data.finished["pareto_rank"].tolist() == nondominated_ranks(points).tolist()
    np.testing.assert_allclose(data.hypervolume, hypervolume_history(points, (0.0, 0.0)))
    by_id = data.trials.set_index("trial_id")
    assert len(data.trials) == len(records)
    assert not by_id.loc["failed", "pareto"] and by_id.loc["failed", "pareto_rank"] == -1
    assert by_id.loc["nan", "pareto_rank"] == -1 and by_id.loc["running", "status"] == "RUNNING"
    assert by_id.loc["t00", "config/arat.gamma"] == records[0].params["arat.gamma"]
    front = data.front
    assert set(front["trial_id"]) == set(data.finished.loc[data.finished["pareto"], "trial_id"])
    assert front["clean_acc"].is_monotonic_decreasing


def test_empty_and_duplicates() -> None:
    empty = build_front([], reference=(0.0, 0.0))
    assert len(empty.trials) == 0 and len(empty.hypervolume) == 0 and len(empty.front) == 0
    assert front_html(empty).count("<circle") == 0
    twins = build_front([TrialRecord("a", Status.FINISHED, 0.5, 0.5), TrialRecord("b", Status.FINISHED, 0.5, 0.5)])
    assert twins.finished["pareto"].tolist() == [True, True]  # identical non-dominated points are both on it


def test_write_report_files(tmp_path: Path) -> None:
    data = build_front(_records(), title="files")
    paths = write_report(data, tmp_path / "pareto")
    assert set(paths) == set(REPORT_FILES) and all(p.exists() for p in paths.values())
    csv = pd.read_csv(paths["front.csv"])
    assert list(csv["trial_id"]) == list(data.front["trial_id"])
    table = pd.read_parquet(paths["trials.parquet"])
    assert len(table) == len(data.trials) and table["pareto"].sum() == data.finished["pareto"].sum()
    for name in ("front.png", "hypervolume.png"):
        assert paths[name].read_bytes()[:8] == PNG_MAGIC


def test_html_is_self_contained_and_escaped() -> None:
    data = build_front(_records())
    page = front_html(data)
    n_plotted = int(data.finished[["clean_acc", "robust_acc"]].notna().all(axis=1).sum())
    assert len(re.findall(r"<circle [^>]*data-trial-id=", page)) == n_plotted == 12
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", page)  # nothing fetched
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page
    assert "<b>&" not in page  # parameter values are escaped
    assert "1 finished trial(s) with a NaN objective" in page


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)


def test_front_html_in_headless_chromium(tmp_path: Path) -> None:
    binary = _chromium()
    if binary is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install -y chromium)")
    records = _records(n=15, seed=3)
    data = build_front(records, title="Study browser-test: clean vs robust accuracy")
    OUTPUT_DIR.mkdir(exist_ok=True)
    page = OUTPUT_DIR / "front.html"
    page.write_text(front_html(data), encoding="utf-8")
    dom = _run_chromium(binary, tmp_path / "profile1", "--dump-dom", page.as_uri()).stdout
    circles = re.findall(r'<circle [^>]*data-trial-id="([^"]+)"', dom)
    plotted = data.finished.dropna(subset=["clean_acc", "robust_acc"])
    assert sorted(circles) == sorted(plotted["trial_id"])  # one point per finished trial with both objectives
    assert 'data-ready="true"' in dom  # the inline script ran to its end
    shot = OUTPUT_DIR / "front.png"
    shot.unlink(missing_ok=True)
    _run_chromium(binary, tmp_path / "profile2", f"--screenshot={shot}", "--window-size=1000,700", page.as_uri())
    assert shot.read_bytes()[:8] == PNG_MAGIC


def test_fronts_are_drawn_as_staircases_and_suspects_are_marked(tmp_path: Path) -> None:
    """The HTML front is the attainment staircase through the front points; a trial whose masking gap exceeds the
    threshold is SUSPECT in the table, the console and both plots."""
    records = [TrialRecord("a", Status.FINISHED, 0.9, 0.1, masking_gap=0.02),
               TrialRecord("b", Status.FINISHED, 0.7, 0.3, masking_gap=0.25),
               TrialRecord("c", Status.FINISHED, 0.6, 0.05, masking_gap=math.nan)]
    data = build_front(records, masking_threshold=0.1)
    assert data.trials.set_index("trial_id")["masking_suspect"].to_dict() == {"a": False, "b": True, "c": False}
    console = format_table(data.trials)
    assert re.search(r"\bb\s+FINISHED.*SUSPECT", console) and "[gradient masking suspect]" in console
    page = front_html(data)
    points = re.search(r'<polyline class="front" points="([^"]+)"', page)
    assert points is not None
    xy = [tuple(map(float, p.split(","))) for p in points.group(1).split()]
    assert len(xy) == 3 and xy[1] == (xy[0][0], xy[2][1])  # b, the corner below b at a's robustness, a
    assert re.search(r'<circle class="front suspect"[^>]*data-trial-id="b"', page)
    assert not re.search(r'<circle class="[^"]*suspect"[^>]*data-trial-id="a"', page)
    assert build_front(records).trials["masking_suspect"].sum() == 0  # no threshold, no suspects
    write_report(data, tmp_path)
    assert (tmp_path / "front.png").read_bytes()[:8] == PNG_MAGIC


def test_stopped_trials_are_drawn_hollow_and_count_nowhere() -> None:
    """A trial stopped at a rung with figures that would dominate every finished trial is on no front, adds no
    hypervolume, and is drawn hollow at its last figures in both plots; the summary counts the epochs it saved."""
    records = [TrialRecord("a", Status.FINISHED, 0.8, 0.3, params={"optim.epochs": 6}, finish_order=1,
                           metrics={"epoch": 6}),
               TrialRecord("b", Status.FINISHED, 0.6, 0.4, params={"optim.epochs": 6}, finish_order=2,
                           metrics={"epoch": 6}),
               TrialRecord("s", Status.STOPPED, 0.95, 0.5, params={"optim.epochs": 6}, metrics={"epoch": 2}),
               TrialRecord("p", Status.PENDING, params={"optim.epochs": 6})]
    data = build_front(records)
    by_id = data.trials.set_index("trial_id")
    assert list(data.front["trial_id"]) == ["a", "b"] and by_id.loc["s", "pareto_rank"] == -1
    assert not by_id.loc["s", "pareto"] and list(data.finished["trial_id"]) == ["a", "b"]
    np.testing.assert_allclose(data.hypervolume[-1], hypervolume(np.array([[0.8, 0.3], [0.6, 0.4]]), (0.0, 0.0)))
    assert list(data.stopped["trial_id"]) == ["s"]

    page = front_html(data)
    assert len(re.findall(r'<circle class="stopped"[^>]*data-stopped-id="s"', page)) == 1
    assert not re.search(r'<circle [^>]*data-trial-id="s"', page)  # not drawn as a finished trial
    front_line = re.search(r'<polyline class="front" points="([^"]+)"', page)
    assert front_line is not None and len(front_line.group(1).split()) == 3  # a, the corner, b: s is not on it
    assert "stopped early (last rung" in page  # the legend

    ax = front_figure(data).axes[0]
    hollow = [c for c in ax.collections if c.get_label().startswith("stopped early")]
    assert len(hollow) == 1 and hollow[0].get_offsets().tolist() == [[0.95, 0.5]]
    assert hollow[0].get_facecolors().size == 0 or (hollow[0].get_facecolors()[:, 3] == 0).all()  # hollow
    filled = [c for c in ax.collections if c.get_label() == "Pareto front"]
    assert sorted(map(tuple, filled[0].get_offsets().tolist())) == [(0.6, 0.4), (0.8, 0.3)]

    assert epochs_summary(data.trials) == ("early stopping: 1 of 3 trials stopped at a rung; 14 trial-epochs "
                                           "trained of 18 full budgets (4 saved)")


def test_the_verified_front_page_and_plot_show_both_fronts_joined() -> None:
    """Both fronts as staircases, one grey link per verified trial from its search point to its verified point,
    a failed verification left out of both; the page fetches nothing."""
    trials = build_front([TrialRecord("a", Status.FINISHED, 0.95, 0.40), TrialRecord("b", Status.FINISHED, 0.90, 0.45),
                          TrialRecord("c", Status.FINISHED, 0.80, 0.50), TrialRecord("d", Status.FINISHED, 0.7, 0.3)]
                         ).trials
    verified = pd.DataFrame({"trial_id": ["a", "b", "c", "d"], "clean_acc": [0.94, 0.91, 0.79, math.nan],
                             "aa_acc": [0.30, 0.20, 0.35, math.nan], "error": ["", "", "", "unreadable"]})
    vf = build_verified_front(verified, trials, split="test", version="standard")
    assert list(vf.front["trial_id"]) == ["a", "c"] and vf.left == ["b"] and vf.joined == []
    page = verified_html(vf)
    search = re.search(r'<polyline class="search-front" points="([^"]+)"', page)
    ver = re.search(r'<polyline class="verified-front" points="([^"]+)"', page)
    assert search is not None and len(search.group(1).split()) == 5  # a, b, c and the two corners between
    assert ver is not None and len(ver.group(1).split()) == 3  # a, the corner, c
    assert len(re.findall(r'<line class="link"', page)) == 3  # d's verification failed: nothing to join
    assert len(re.findall(r'<circle class="search"[^>]*data-kind="search"', page)) == 3
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", page)
    assert "left the front when verified: b" in page

    ax = verified_figure(vf).axes[0]
    lines = {ln.get_label(): ln.get_xydata().tolist() for ln in ax.get_lines()}
    assert lines["search front"] == [[0.8, 0.5], [0.8, 0.45], [0.9, 0.45], [0.9, 0.4], [0.95, 0.4]]
    assert lines["verified front"] == [[0.79, 0.35], [0.79, 0.3], [0.94, 0.3]]
    links = [xy for label, xy in lines.items() if label not in ("search front", "verified front")]
    joined = [ln.get_xydata().tolist() for ln in ax.get_lines() if ln.get_label().startswith("_")]
    assert len(joined) == 3 and [[0.95, 0.4], [0.94, 0.3]] in joined and len(links) <= 3
