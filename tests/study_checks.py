"""What a finished study left behind, read as a user would: Optuna's trials from the searcher state Tune saved,
and the study's MLflow runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlflow import MlflowClient


def optuna_trials(study_dir: Path) -> dict[str, tuple[str, list[float] | None]]:
    """Tune trial id -> (Optuna state, values) from the searcher state Tune saved with the study."""
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch()
    searcher.restore_from_dir(str(study_dir))
    assert searcher._ot_study is not None
    frozen = {t.number: t for t in searcher._ot_study.trials}
    return {tid: (frozen[t.number].state.name, frozen[t.number].values) for tid, t in searcher._ot_trials.items()}


def mlflow_runs(uri: str, study: str) -> tuple[Any, list[Any]]:
    """The study's parent run and its child runs, as the MLflow UI would list them."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(study)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("run_kind") == "study"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == len(runs) - 1  # nothing outside the study's tree
    return parents[0], children
