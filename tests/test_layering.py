"""The modules that only read or write MLflow records and trial tables never pull in Ray, torch or Optuna, so
``python -m orchestrator.select`` and ``verify``'s reading start light. (That the method library never imports the
orchestration stack is checked in test_train.py.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO

HEAVY = ("ray", "torch", "optuna")


def _imported(modules: list[str]) -> set[str]:
    """The top-level packages loaded after importing ``modules`` in a fresh interpreter."""
    code = ("import importlib, json, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted({k.split('.')[0] for k in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("module", ["orchestrator.select", "orchestrator.tracking", "orchestrator.verify",
                                    "orchestrator.report", "orchestrator.records", "orchestrator.names",
                                    "orchestrator.tracking_queue", "orchestrator.replay", "orchestrator.summary"])
def test_mlflow_side_imports_neither_ray_nor_torch(module: str) -> None:
    loaded = _imported([module])
    assert not loaded & set(HEAVY), f"{module} imports {sorted(loaded & set(HEAVY))}"


def test_the_study_driver_leaves_torch_to_the_trials() -> None:
    # The driver names the trainable (run_trial) and builds the study; torch and the method library load in the
    # trials' actors and workers (and in the driver only when a front model is exported, after its trial).
    loaded = _imported(["orchestrator.tune", "orchestrator.trainable", "orchestrator.tune_callbacks",
                        "orchestrator.console", "orchestrator.moasha", "orchestrator.searcher"])
    assert "ray" in loaded and not loaded & {"torch", "sklearn", "torchvision"}, sorted(loaded)
    assert "torch" in _imported(["orchestrator.train_worker"])


def test_the_train_controllers_callback_module_leaves_out_the_method_library() -> None:
    # On the lean trainer's fallback a trial's Train controller is a fresh process that imports the module of each
    # callback it is given; the report callback's module must not make it import the method library (torch comes
    # with Ray's TorchConfig).
    loaded = _imported(["orchestrator.train_report"])
    assert "ray" in loaded and not loaded & {"arat_train", "torch", "sklearn"}
