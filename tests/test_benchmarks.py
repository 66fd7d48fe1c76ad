"""The benchmarks run end to end at toy sizes and write the JSON they promise (their figures are not checked:
speed is measured in benchmarks/, never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO


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
