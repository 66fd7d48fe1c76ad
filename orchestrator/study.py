"""A study's plan: its validated preset, name, storage and tracking URI, resolved before Ray starts.

:func:`plan_study` reads the command line's choices (a new study from a preset, or ``--resume`` of a stored one)
and checks everything that can be checked without a cluster; a problem raises :class:`SpecError` naming the field,
and nothing is written.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from .names import SPEC_FILE
from .space import SpecError, StudySpec, check_name, load_spec, read_preset, validate
from .storage import absolute, exists, read_text, write_text

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PRESET = REPO / "search_spaces" / "quickstart.yaml"


@dataclass(frozen=True)
class Study:
    """A validated study: its preset, its name and where it lives."""

    spec: StudySpec
    name: str
    storage_path: str  # absolute local path or URI
    tracking_uri: str
    resume: bool

    @property
    def path(self) -> str:
        return f"{self.storage_path.rstrip('/')}/{self.name}"

    def write_spec(self) -> None:
        """Store the resolved preset with the study (``--resume`` reads it back)."""
        write_text(f"{self.path}/{SPEC_FILE}", yaml.safe_dump(self.spec.to_dict(), sort_keys=False))


def plan_study(args: argparse.Namespace) -> Study:
    """Resolve and validate everything a study needs, without starting Ray or writing anything."""
    storage = absolute(args.storage_path or "runs")
    tracking = args.tracking_uri or f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"
    if args.num_samples is not None and args.num_samples < 1:
        raise SpecError("--num-samples", f"must be >= 1, got {args.num_samples}")
    if args.resume:
        return _plan_resume(args, storage, tracking)
    spec = load_spec(args.config or DEFAULT_PRESET, args.overrides, num_samples=args.num_samples,
                     smoke_test=args.smoke_test)
    name = args.name or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.name is not None:
        check_name(args.name, "--name")
    study = Study(spec, name, storage, tracking, resume=False)
    if exists(study.path):
        raise SpecError("--name", f"a study {name!r} already exists in {storage}; pass --resume to continue it "
                                  "or choose another --name")
    return study


def _plan_resume(args: argparse.Namespace, storage: str, tracking: str) -> Study:
    name = args.name or _newest_study(storage, args.config)
    path = f"{storage.rstrip('/')}/{name}"
    if not exists(f"{path}/{SPEC_FILE}"):
        raise SpecError("--resume", f"no study {name!r} in {storage} (looked for {path}/{SPEC_FILE})")
    if args.overrides or args.num_samples is not None or args.smoke_test or args.tracking_uri:
        log.warning("--resume continues %s with its stored settings (MLflow tracking URI included); "
                    "--set/--num-samples/--smoke-test/--tracking-uri are ignored", name)
    raw = yaml.safe_load(read_text(f"{path}/{SPEC_FILE}"))
    return Study(validate(raw), name, storage, tracking, resume=True)


def _newest_study(storage: str, config: str | None) -> str:
    """The most recently changed study of the preset ``config`` (or the default preset) in local storage."""
    if "://" in storage:
        raise SpecError("--name", "is required with --resume when --storage-path is a URI")
    preset = str(read_preset(config or DEFAULT_PRESET).get("name", ""))
    found = sorted((p.stat().st_mtime, p.name) for p in Path(storage).glob(f"{preset}-*") if (p / SPEC_FILE).is_file())
    if not found:
        raise SpecError("--resume", f"no study of preset {preset!r} in {storage}; pass --name")
    return found[-1][1]
