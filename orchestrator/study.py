"""A study's plan: its validated preset, name, storage and tracking URI, resolved before Ray starts.

:func:`plan_study` reads the command line's choices (a new study from a preset, or ``--resume`` of a stored one)
and checks everything that can be checked without a cluster; a problem raises :class:`SpecError` naming the field,
and nothing is written.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from arat_train.config import ConfigError
from arat_train.safe_yaml import MAX_FILE_BYTES, load_yaml

from .names import SPEC_FILE, TRACKING_FILE
from .space import MAX_TRIALS, SpecError, StudySpec, check_name, load_spec, read_preset, validate
from .storage import absolute, exists, read_bytes, write_text

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
        """Store the resolved preset and the tracking URI with the study (``--resume`` and verify read them)."""
        write_text(f"{self.path}/{SPEC_FILE}", yaml.safe_dump(self.spec.to_dict(), sort_keys=False))
        write_text(f"{self.path}/{TRACKING_FILE}", yaml.safe_dump({"tracking_uri": self.tracking_uri}))

    def resume_command(self) -> str:
        """The command line that continues this study with its stored settings."""
        args = ["--resume", "--name", self.name, "--storage-path", self.storage_path, "--tracking-uri",
                self.tracking_uri]
        return "python orchestrator/tune.py " + shlex.join(args)


def plan_study(args: argparse.Namespace) -> Study:
    """Resolve and validate everything a study needs, without starting Ray or writing anything."""
    storage = absolute(args.storage_path or "runs")
    tracking = args.tracking_uri or f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"
    if args.num_samples is not None and args.num_samples < 1:
        raise SpecError("--num-samples", f"must be >= 1, got {args.num_samples}")
    if args.num_samples is not None and args.num_samples > MAX_TRIALS:
        raise SpecError("--num-samples", f"must be in [1, {MAX_TRIALS:,}], got {args.num_samples:,}")
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
    raw = _read_stored(f"{path}/{SPEC_FILE}")
    if not isinstance(raw, dict):
        raise SpecError("--resume", f"{path}/{SPEC_FILE} does not hold a study preset")
    stored = stored_tracking_uri(path)
    if stored is None:  # a study stored before the tracking URI was kept with it
        log.warning("%s has no %s: using the tracking URI %s for its printed commands", path, TRACKING_FILE,
                    tracking)
    ignored = [flag for flag, given in (("--set", args.overrides), ("--num-samples", args.num_samples is not None),
                                        ("--smoke-test", args.smoke_test),
                                        ("--tracking-uri", args.tracking_uri not in (None, stored))) if given]
    if ignored:
        log.warning("--resume continues %s with its stored settings (MLflow tracking URI %s included); %s ignored",
                    name, stored or tracking, ", ".join(ignored))
    return Study(validate(raw), name, storage, stored or tracking, resume=True)


def _read_stored(path: str, field: str = "--resume") -> object:
    """A YAML file the study stored, read as strictly as a preset."""
    try:
        return load_yaml(read_bytes(path, MAX_FILE_BYTES + 1), field, source=path, max_bytes=MAX_FILE_BYTES)
    except ConfigError as err:
        raise SpecError.of(err) from None
    except OSError as err:
        raise SpecError(field, f"cannot read {path}: {err}") from None


def stored_tracking_uri(study_path: str, field: str = "--resume") -> str | None:
    """The tracking URI stored with the study at ``study_path`` (local path or URI), or None if there is none.

    A file that is there but unreadable raises :class:`SpecError` for ``field``.
    """
    path = absolute(f"{study_path.rstrip('/')}/{TRACKING_FILE}")
    if not exists(path):
        return None
    data = _read_stored(path, field)
    uri = data.get("tracking_uri") if isinstance(data, dict) else None
    if not isinstance(uri, str) or not uri:
        raise SpecError(field, f"{path} holds no tracking_uri")
    return uri


def _newest_study(storage: str, config: str | None) -> str:
    """The most recently changed study of the preset ``config`` (or the default preset) in local storage."""
    if "://" in storage:
        raise SpecError("--name", "is required with --resume when --storage-path is a URI")
    preset = str(read_preset(config or DEFAULT_PRESET).get("name", ""))
    found = sorted((p.stat().st_mtime, p.name) for p in Path(storage).glob(f"{preset}-*") if (p / SPEC_FILE).is_file())
    if not found:
        raise SpecError("--resume", f"no study of preset {preset!r} in {storage}; pass --name")
    return found[-1][1]
