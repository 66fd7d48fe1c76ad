"""Standalone trainer: ``python -m arat_train --config FILE [--set key=value ...]``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .checkpoint import CheckpointError
from .config import ConfigError, load_config
from .train import TrainingDiverged, train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m arat_train", description=__doc__)
    parser.add_argument("--config", help="YAML training config (default: the bundled digits config)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a dotted key, e.g. --set optim.epochs=2 (repeatable)")
    parser.add_argument("--checkpoint-dir", help="write checkpoint.pt here after every epoch")
    parser.add_argument("--resume", help="continue from this checkpoint file")
    parser.add_argument("--json", action="store_true", help="print the final metrics as one JSON line")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    path = args.config or str(resources.files("arat_train") / "configs" / "digits.yaml")
    try:
        cfg = load_config(path, args.overrides)
    except (ConfigError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    bar: tqdm | None = None  # shown from the first epoch on: a refused --resume file prints only its error

    def steps(batches: Iterable[Any]) -> Iterable[Any]:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=cfg.optim.epochs, desc="epochs", unit="epoch")
        return tqdm(batches, desc="steps", leave=False, unit="batch")

    def on_epoch(metrics: dict[str, float], _checkpoint: Path | None) -> None:
        if bar is not None:
            bar.update(1)
            bar.set_postfix(clean=f"{metrics['clean_acc']:.3f}", robust=f"{metrics['robust_acc']:.3f}")

    try:
        final = train(cfg, callback=on_epoch, checkpoint_dir=args.checkpoint_dir, resume_from=args.resume,
                      progress=steps)
    except CheckpointError as err:  # --resume names a file that is not a checkpoint of this run
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(json.dumps(final))
    else:
        width = max(len(k) for k in final)
        for key in sorted(final):
            print(f"{key:<{width}}  {final[key]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
