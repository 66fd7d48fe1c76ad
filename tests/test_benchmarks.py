"""The benchmarks run end to end at toy sizes and write the JSON they promise (their figures are not checked:
speed is measured in benchmarks/, never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO

from orchestrator.space import load_spec


def _run(script: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], cwd=REPO, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)


def test_train_step_benchmark_compares_every_variant_with_plain(tmp_path: Path) -> None:
    out = tmp_path / "train_step.json"
    proc = _run("train_step.py", ["--model", "small_cnn", "--batch-size", "16", "--attack-steps", "1", "--iters",
                                  "2", "--warmup", "1", "--device", "cpu", "--variants", "plain,fast-fp32,fast-bf16",
                                  "--profile", "1", "--out", str(out)])
    assert proc.returncode == 0, proc.stdout[-3000:]
    report = json.loads(out.read_text())
    rows = {r["variant"]: r for r in report["rows"]}
    assert list(rows) == ["plain", "fast-fp32", "fast-bf16"]
    assert rows["plain"]["ratio_vs_plain"] == 1.0
    for r in rows.values():
        assert r["images_per_s"] > 0 and r["peak_mem_mb"] > 0
        assert r["ratio_vs_plain"] == r["images_per_s"] / rows["plain"]["images_per_s"]
    assert report["gflop_forward"] > 0 and report["commit"] and report["date"]
    assert out.with_suffix(".trace.json").is_file()  # --profile's Chrome trace
    assert "x plain" in proc.stdout and "profile of 1 steps of fast-bf16" in proc.stdout


def test_train_step_benchmark_refuses_an_unknown_variant(tmp_path: Path) -> None:
    proc = _run("train_step.py", ["--variants", "plain,turbo", "--out", str(tmp_path / "x.json")])
    assert proc.returncode == 2
    assert "--variants: unknown ['turbo']; allowed: plain, fast-fp32, fast-bf16" in proc.stdout
    assert not (tmp_path / "x.json").exists()


def test_eval_attacks_benchmark_writes_its_table(tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    proc = _run("eval_attacks.py", ["--epochs", "0", "--n", "16", "--threads", "1", "--device", "cpu", "--out",
                                    str(out)])
    assert proc.returncode == 0, proc.stdout[-3000:]
    report = json.loads(out.read_text())
    assert report["n"] == 16 and report["device"] == "cpu" and report["commit"]
    rows = {r["attack"]: r for r in report["rows"]}
    assert list(rows) == ["pgd20", "autoattack-cheap", "autoattack-standard"]
    for r in rows.values():
        assert r["n"] == 16 and r["seconds"] > 0 and 0 <= r["robust_acc"] <= r["clean_acc"] <= 1


def test_objective_cost_benchmark_writes_its_shares(tmp_path: Path) -> None:
    out = tmp_path / "cost.json"
    proc = _run("objective_cost.py", ["search_spaces/quickstart.yaml", "--threads", "1", "--batch", "4",
                                      "--repeats", "1", "--iters", "2", "--profile", "1,1", "--out", str(out)])
    assert proc.returncode == 0, proc.stdout[-3000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["preset"] == "quickstart.yaml" and row["final_examples"] == 200 and row["apgd_targets"] == 3
    for key in ("train_s_per_image", "pgd_s_per_image", "apgd_ce_s_per_image", "apgd_t_s_per_image"):
        assert row[key] > 0, key
    per_image = row["pgd_s_per_image"] + row["apgd_ce_s_per_image"] + row["apgd_t_s_per_image"]
    cfg = load_spec(REPO / "search_spaces" / "quickstart.yaml").train_config({})
    train_images = 1797 - cfg.data.val_size - cfg.data.test_size  # digits' training split
    assert row["shares"]["1/1"] == per_image * 200 / (row["train_s_per_image"] * train_images * cfg.optim.epochs)


def test_search_efficiency_replays_recorded_curves_through_the_study_code(tmp_path: Path) -> None:
    """record_curves.py trains a real pool (3 configurations, 2 epochs, 128 images); search_efficiency.py replays it
    through BudgetOptunaSearch and MOASHA: fifo trains every epoch of every trial, moasha no more, and each
    hypervolume is that of the full-budget trials' recorded final objectives."""
    curves, out, plot = tmp_path / "curves.json", tmp_path / "se.json", tmp_path / "se.png"
    proc = _run("record_curves.py", ["--pool", "3", "--set", "optim.epochs=2", "--set", "data.train_limit=128",
                                     "--set", "eval.max_examples=48", "--output", str(curves)])
    assert proc.returncode == 0, proc.stdout[-3000:]
    recorded = json.loads(curves.read_text())
    assert recorded["epochs"] == 2 and len(recorded["configs"]) == 3
    first = recorded["configs"][0]["epochs"]
    assert [e["epoch"] for e in first] == [1, 2] and "probe_robust_acc" in first[0] and "probe_seconds" not in first[1]
    assert all(0 <= e["robust_acc"] <= e["clean_acc"] <= 1 for c in recorded["configs"] for e in c["epochs"])

    proc = _run("search_efficiency.py", ["--curves", str(curves), "--seeds", "2", "--fifo-trials", "3",
                                         "--moasha-trials", "5", "--settings", "1:2:epoch,1:2:probe",
                                         "--trial-overhead-s", "1", "--output", str(out), "--plot", str(plot)])
    assert proc.returncode == 0, proc.stdout[-3000:]
    report = json.loads(out.read_text())
    assert [r["setting"] for r in report["table"]] == ["fifo", "moasha g1 eta2 epoch", "moasha g1 eta2 probe"]
    fifo = report["table"][0]
    assert fifo["full_budget_trials"] == [3, 3] and fifo["epochs_end"] == [1.0, 1.0]
    for name, histories in report["histories"].items():
        for history in histories:
            assert history, name
            hv = [h["hypervolume"] for h in history]
            assert hv == sorted(hv) and all(0 <= v <= report["pool_hypervolume"] + 1e-12 for v in hv)
            epochs = [h["epochs"] for h in history]
            assert epochs == sorted(epochs) and epochs[-1] <= (3 if name == "fifo" else 5) * 2
    for row in report["table"][1:]:  # 5 trials of 2 epochs, at least the first two at full budget
        assert all(2 <= n <= 5 for n in row["full_budget_trials"])
    assert {r["rank_on"] for r in report["rungs"]} == {"epoch", "probe"} and report["rungs"][0]["epoch"] == 1
    assert plot.stat().st_size > 10_000
