"""The live console table, from plain rows: the objectives and searched parameters per trial, the current front
marked, and a resource line that counts the trials' workers."""

from __future__ import annotations

import math

from conftest import REPO

from orchestrator.console import Row, render, resource_line


def test_table_shows_objectives_parameters_and_the_front() -> None:
    rows = [Row("a", "FINISHED", 8, 8, 0.95, 0.30, {"arat.gamma": 1.5, "attack.eps": 20.0}),
            Row("b", "FINISHED", 8, 8, 0.90, 0.45, {"arat.gamma": 30.0, "attack.eps": 30.0}),
            Row("c", "FINISHED", 8, 8, 0.85, 0.25, {"arat.gamma": 300.0, "attack.eps": 25.0}),
            Row("d", "RUNNING", 3, 8, 0.99, 0.99, {"arat.gamma": 2.0, "attack.eps": 12.0}),
            Row("e", "STOPPED", 1, 8, 0.5, 0.1, {"arat.gamma": 9.0, "attack.eps": 40.0}),
            Row("f", "PENDING", math.nan, 8, math.nan, math.nan, {"arat.gamma": 3.0, "attack.eps": 33.0})]
    text = render(rows, ["arat.gamma", "attack.eps"], "2 trial(s) running, 1 worker(s) each: 2 of 2 CPUs")
    lines = text.splitlines()
    assert lines[0].startswith("Trials (3 finished, 1 running, 1 stopped, 1 pending); * = on the current front")
    assert lines[0].endswith("2 trial(s) running, 1 worker(s) each: 2 of 2 CPUs")
    assert lines[1].split() == ["trial", "status", "epoch", "clean_acc", "robust_acc", "gamma", "eps"]
    marked = {line.split()[1] for line in lines[2:] if line.startswith("*")}
    assert marked == {"a", "b"}  # c is dominated; d is better but still running, so not (yet) on the front
    by_trial = {line.lstrip("* ").split()[0]: line.lstrip("* ").split() for line in lines[2:]}
    assert by_trial["d"][1:5] == ["RUNNING", "3/8", "0.99", "0.99"] and by_trial["d"][5:] == ["2", "12"]
    assert by_trial["f"][2:5] == ["-", "-", "-"]


def test_table_marks_gradient_masking_suspects_among_finished_trials() -> None:
    rows = [Row("a", "FINISHED", 8, 8, 0.95, 0.30, {"arat.gamma": 1.5}, masking_gap=0.25),
            Row("b", "FINISHED", 8, 8, 0.90, 0.45, {"arat.gamma": 30.0}, masking_gap=0.05),
            Row("c", "FINISHED", 8, 8, 0.85, 0.25, {"arat.gamma": 3.0}),  # no gap measured: no verdict
            Row("d", "RUNNING", 3, 8, 0.80, 0.20, {"arat.gamma": 2.0}, masking_gap=0.5)]  # not final yet
    lines = render(rows, ["arat.gamma"], masking_threshold=0.1).splitlines()
    assert "SUSPECT = PGD over the objective by more than 0.1" in lines[0]
    assert lines[1].split()[-1] == "masking"
    flagged = {line.lstrip("* ").split()[0] for line in lines[2:] if line.rstrip().endswith("SUSPECT")}
    assert flagged == {"a"}
    assert "masking" not in render(rows, ["arat.gamma"]).splitlines()[1]  # no threshold: no column


def test_resource_line_counts_the_workers_not_the_drivers() -> None:
    line = resource_line(2, 2, {"CPU": 0.5}, {"CPU": 2.0})
    assert line == "2 trial(s) running, 2 worker(s) each: 2 of 2 CPUs"
    assert resource_line(1, 1, {"CPU": 4, "GPU": 1}, {"CPU": 16, "GPU": 1}) == \
        "1 trial(s) running, 1 worker(s) each: 4 of 16 CPUs, 1 of 1 GPUs"


def test_the_closing_lines_suggest_verification_with_its_time() -> None:
    """Cheap AutoAttack's time on the test split, scaled from the trials' own APGD objective: here 10 s for 180
    images at 25 iterations and 3 targets, so 10 * 2 (360 test images) * 1000 / 100 = 200 s per front model."""
    import pandas as pd

    from orchestrator.space import load_spec
    from orchestrator.study import Study
    from orchestrator.summary import cheap_verify_seconds, verify_hint

    front = pd.DataFrame({"pareto": [True, True], "final_s": [10.0, 5.0], "final_examples": [180, 180],
                          "config/eval.apgd_iters": [25, 25], "config/eval.apgd_targets": [3, 3]})
    assert cheap_verify_seconds(front, 360) == 200 + 100
    assert math.isnan(cheap_verify_seconds(front.drop(columns="final_s"), 360))  # a PGD objective: no estimate
    # 1-thread CPU trials; verification on 2 threads takes half their time (a GPU trial's time is kept).
    threads = front.assign(**{"config/perf.num_threads": [1, 1], "config/device": ["cpu", "cuda"]})
    assert cheap_verify_seconds(threads, 360, verify_threads=2) == 100 + 100
    assert cheap_verify_seconds(threads, 360) == 200 + 100  # no thread count for verification: unscaled
    spec = load_spec(REPO / "search_spaces" / "quickstart.yaml", ["data.test_size=360"])
    study = Study(spec, "qs", "/s", "sqlite:////db", resume=False)
    lines = verify_hint(study, front)
    assert "(2 model(s), about 5 min here)" in lines[0]
    assert lines[1].strip() == "python -m orchestrator.verify --study /s/qs --tracking-uri sqlite:////db --version cheap"
    assert lines[3].strip().endswith("--trials <trial id>")
