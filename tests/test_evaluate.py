"""AutoAttack and PGD-with-restarts verification on a model trained on digits, and the evaluation CLI."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from arat_train.accuracy import eval_mode
from arat_train.checkpoint import load_checkpoint
from arat_train.config import load_config
from arat_train.data import ArrayData
from arat_train.evaluate import main
from arat_train.robustness import autoattack_accuracy, pgd_accuracy
from arat_train.train import build, load_data, train

EPS = 51.0  # 1/255, the digits threat model
REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, ArrayData, Path]:
    """AR-AT+SWA on digits for 6 epochs: (model, validation split, checkpoint path)."""
    out = tmp_path_factory.mktemp("evaluate")
    cfg = load_config(str(REPO / "arat_train/configs/digits.yaml"),
                      ["optim.epochs=6", "eval.max_examples=64", "swa.enabled=true", "swa.start=0.5", "swa.every=5",
                       "perf.num_threads=1"])
    train(cfg, checkpoint_dir=out)
    ckpt = load_checkpoint(out / "checkpoint.pt")
    _, val = load_data(cfg, torch.device("cpu"))
    model = build(cfg, 10, 1, torch.device("cpu")).model
    model.load_state_dict(ckpt["model"])
    return model, val, out / "checkpoint.pt"


def test_autoattack_is_at_most_pgd_is_at_most_clean(
    trained: tuple[nn.Module, ArrayData, Path], caplog: pytest.LogCaptureFixture,
) -> None:
    model, val, _ = trained
    caplog.set_level(logging.WARNING)
    pgd = pgd_accuracy(model, val.x, val.y, eps=EPS, steps=20, n_examples=128)
    aa = autoattack_accuracy(model, val.x, val.y, eps=EPS, version="cheap", n_examples=128)
    print(f"clean {pgd.clean_acc:.3f}  pgd20 {pgd.robust_acc:.3f}  aa-cheap {aa.robust_acc:.3f}")
    assert pgd.n_examples == aa.n_examples == 128
    assert aa.clean_acc == pgd.clean_acc  # same examples, same (adv-BN, eval-mode) network
    assert pgd.clean_acc > 0.5
    assert 0.0 < pgd.robust_acc < pgd.clean_acc
    assert aa.robust_acc <= pgd.robust_acc
    # AutoAttack's sanity checks (randomness, softmax output, dynamic defence, class count) find nothing.
    assert not [r.getMessage() for r in caplog.records if "autoattack" in r.getMessage()]


class _Softmaxed(nn.Module):
    """A model that wrongly returns probabilities: AutoAttack's output check must complain."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor, bn: str = "adv") -> torch.Tensor:
        return self.inner(x, bn=bn).softmax(dim=1)


def test_autoattack_warnings_reach_our_logger_once(
    trained: tuple[nn.Module, ArrayData, Path], caplog: pytest.LogCaptureFixture,
) -> None:
    model, val, _ = trained
    caplog.set_level(logging.WARNING)
    autoattack_accuracy(_Softmaxed(model), val.x, val.y, eps=EPS, version="cheap", attacks=["apgd-ce"],
                        n_examples=16, batch_size=8)  # two batches, so the check runs twice
    found = [r for r in caplog.records if "probability distribution" in r.getMessage()]
    assert len(found) == 1 and found[0].name == "arat_train.robustness"


def test_standard_autoattack_is_at_most_cheap(trained: tuple[nn.Module, ArrayData, Path]) -> None:
    """Standard runs cheap's two attacks (same settings, same seed) and then FAB-T and Square."""
    model, val, _ = trained
    cheap = autoattack_accuracy(model, val.x, val.y, eps=EPS, version="cheap", n_examples=32)
    standard = autoattack_accuracy(model, val.x, val.y, eps=EPS, version="standard", n_examples=32)
    print(f"n=32 clean {standard.clean_acc:.3f}  aa-cheap {cheap.robust_acc:.3f}  "
          f"aa-standard {standard.robust_acc:.3f} ({standard.seconds:.1f} s)")
    assert standard.attack == "autoattack-standard"
    assert standard.robust_acc <= cheap.robust_acc <= standard.clean_acc


def test_autoattack_is_seeded_and_leaves_the_model_and_rng_alone(
    trained: tuple[nn.Module, ArrayData, Path],
) -> None:
    model, val, _ = trained
    model.train()
    stats = [b.clone() for b in model.buffers()]
    rng = torch.get_rng_state()
    first = autoattack_accuracy(model, val.x, val.y, eps=EPS, version="cheap", attacks=["apgd-ce"], seed=3,
                                n_examples=32)
    second = autoattack_accuracy(model, val.x, val.y, eps=EPS, version="cheap", attacks=["apgd-ce"], seed=3,
                                 n_examples=32)
    assert first.robust_acc == second.robust_acc
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training  # attacked in eval mode, mode restored
    assert all(torch.equal(a, b) for a, b in zip(stats, model.buffers(), strict=True))  # no BN update
    with torch.no_grad(), eval_mode(model):
        adv_clean = (model(val.x[:32], bn="adv").argmax(1) == val.y[:32]).float().mean().item()
    assert first.clean_acc == pytest.approx(adv_clean)


def test_pgd_restarts_only_lower_the_estimate(trained: tuple[nn.Module, ArrayData, Path]) -> None:
    model, val, _ = trained
    one = pgd_accuracy(model, val.x, val.y, eps=EPS, steps=5, restarts=1, n_examples=128, seed=1)
    three = pgd_accuracy(model, val.x, val.y, eps=EPS, steps=5, restarts=3, n_examples=128, seed=1)
    assert three.attack == "pgd5x3"
    assert three.robust_acc <= one.robust_acc  # the first restart is the single run, then more can fail


def test_l2_threat_model(trained: tuple[nn.Module, ArrayData, Path]) -> None:
    model, val, _ = trained
    kw = {"norm": "l2", "version": "cheap", "n_examples": 32}  # APGD-CE and APGD-T
    small = autoattack_accuracy(model, val.x, val.y, eps=4.0, **kw)  # type: ignore[arg-type]
    large = autoattack_accuracy(model, val.x, val.y, eps=510.0, **kw)  # type: ignore[arg-type]
    pgd = pgd_accuracy(model, val.x, val.y, eps=510.0, norm="l2", n_examples=32)
    print(f"l2: clean {small.clean_acc:.3f}  aa(4/255) {small.robust_acc:.3f}  aa(2.0) {large.robust_acc:.3f}  "
          f"pgd20(2.0) {pgd.robust_acc:.3f}")
    assert small.robust_acc > large.robust_acc
    assert small.robust_acc >= small.clean_acc - 0.1
    assert large.robust_acc <= pgd.robust_acc < pgd.clean_acc


def test_bad_arguments_are_refused(trained: tuple[nn.Module, ArrayData, Path]) -> None:
    model, val, _ = trained
    with pytest.raises(ValueError, match="standard"):
        autoattack_accuracy(model, val.x, val.y, eps=EPS, version="standard", attacks=["apgd-ce"])
    with pytest.raises(ValueError, match="allowed"):
        autoattack_accuracy(model, val.x, val.y, eps=EPS, version="cheap", attacks=["pgd"])
    with pytest.raises(ValueError, match="eps"):
        autoattack_accuracy(model, val.x, val.y, eps=0.0)
    with pytest.raises(ValueError, match="norm"):
        pgd_accuracy(model, val.x, val.y, eps=EPS, norm="l1")  # type: ignore[arg-type]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "arat_train.evaluate", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def test_cli_prints_clean_pgd_and_autoattack(trained: tuple[nn.Module, ArrayData, Path]) -> None:
    _, _, checkpoint = trained
    proc = _cli("--checkpoint", str(checkpoint), "--attack", "autoattack", "--version", "cheap",
                "--attacks", "apgd-ce", "--n-examples", "24", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["n_examples"] == 24 and out["model"] == "final" and out["eps"] == EPS
    assert 0.0 <= out["aa_acc"] <= out["clean_acc"] and out["pgd_acc"] <= out["clean_acc"]
    proc = _cli("--checkpoint", str(checkpoint), "--attack", "pgd", "--swa", "--n-examples", "24",
                "--steps", "5", "--restarts", "2")
    assert proc.returncode == 0, proc.stderr
    assert "swa model" in proc.stdout and "clean_acc" in proc.stdout and "pgd5x2" in proc.stdout
    assert "aa_acc" not in proc.stdout


def test_cli_refuses_a_missing_or_foreign_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Clear one-line errors and exit status 2, no traceback (in-process: the subprocess path is tested above)."""
    assert main(["--checkpoint", str(tmp_path / "nope.pt"), "--attack", "pgd"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint not found:") and "Traceback" not in err
    bogus = tmp_path / "bogus.pt"
    bogus.write_text("not a checkpoint")
    assert main(["--checkpoint", str(bogus)]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err
    torch.save({"weights": 1}, bogus)
    assert main(["--checkpoint", str(bogus)]) == 2
    assert "not a checkpoint of arat_train.train" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", str(bogus), "--attack", "fgsm"])
    assert exit_info.value.code == 2
