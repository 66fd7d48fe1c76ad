"""Give back the placement groups that a study's stopped trials left holding the cluster's resources.

Each trial's Ray Train run reserves its workers in a placement group. When a study's driver is stopped (SIGINT,
SIGTERM, or killed) while trials run, Tune kills the trials' driver actors, and with them their Train controllers;
Ray 2.60 does not remove a group whose creating controller died that way, even once the study's job has ended.
Ray Train leaves that to a detached ``PlacementGroupCleaner`` actor per trial, which asks the State API whether
its controller lives. Seen here: its thread dies when it cannot tell which Ray cluster it is on ("Found multiple
active Ray instances", two clusters on one machine), and the group stays ``CREATED`` for good, its CPUs and GPUs
held; the next study's trials then wait for resources forever.

So the study cleans up after itself, and only after itself:

* its driver, once ``Tuner.fit`` has returned (finished or stopped), removes the groups its own job still holds
  (:func:`release`): no trial of it runs any more, so none of them is in use;
* ``--resume`` removes the groups of the study's earlier drivers (their job ids are kept in
  ``<study>/drivers.json``) whose jobs have ended, which covers a driver that was killed before it could.

Detached groups and groups of other jobs are never touched. Where the State API cannot answer (no dashboard), it
says so and changes nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

from .names import DRIVERS_FILE
from .storage import exists, read_text, write_text

log = logging.getLogger(__name__)

LIVE_JOB_STATES = ("PENDING", "RUNNING")  # a job in another state has ended: its groups are nobody's
_LIMIT = 10_000


def _address() -> str | None:
    """The connected cluster's GCS address: the State API then never has to guess which cluster it is."""
    import ray

    return ray.get_runtime_context().gcs_address if ray.is_initialized() else None


def held_groups(job_ids: Iterable[str]) -> list[Any]:
    """The live, non-detached placement groups created by the jobs ``job_ids`` (hex), as the State API lists
    them (``ray list placement-groups --detail``)."""
    from ray.util.state import list_placement_groups

    jobs = set(job_ids)
    if not jobs:
        return []
    groups = list_placement_groups(address=_address(), detail=True, limit=_LIMIT, raise_on_missing_output=False)
    return [g for g in groups if g.creator_job_id in jobs and g.state != "REMOVED" and not g.is_detached]


def ended_jobs(job_ids: Iterable[str]) -> set[str]:
    """Those of ``job_ids`` that Ray knows and that are no longer running."""
    from ray.util.state import list_jobs

    wanted = set(job_ids)
    jobs = list_jobs(address=_address(), limit=_LIMIT, raise_on_missing_output=False)
    return {j.job_id for j in jobs
            if j.job_id in wanted and str(getattr(j.status, "value", j.status)) not in LIVE_JOB_STATES}


def _resources(groups: list[Any]) -> str:
    total: dict[str, float] = {}
    for group in groups:
        for bundle in group.bundles or []:
            for key, value in (bundle.get("unit_resources") or {}).items():
                if key in ("CPU", "GPU"):
                    total[key] = total.get(key, 0.0) + float(value)
    return ", ".join(f"{v:g} {k}" for k, v in sorted(total.items())) or "no CPU or GPU"


def release(job_ids: Iterable[str], whose: str) -> int:
    """Remove the live placement groups of the jobs ``job_ids``; say what was given back. Returns how many."""
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    try:
        groups = held_groups(job_ids)
        for group in groups:
            remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(group.placement_group_id)))
    except Exception as exc:  # the State API is served by the dashboard, which a cluster may run without
        log.warning("could not check for placement groups %s left behind (%s); if trials wait for resources "
                    "that nothing uses, `ray list placement-groups` shows them", whose, _reason(exc))
        return 0
    if groups:
        log.warning("released %d placement group(s) (%s) that %s left behind", len(groups), _resources(groups),
                    whose)
    return len(groups)


def _reason(exc: BaseException) -> str:
    """An exception in one line (its message's first line, or its type when the message is empty)."""
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def current_job() -> str:
    import ray

    return str(ray.get_runtime_context().get_job_id())


def drivers(study_path: str) -> list[str]:
    """The job ids of the study's drivers so far (oldest first)."""
    path = f"{study_path.rstrip('/')}/{DRIVERS_FILE}"
    if not exists(path):
        return []
    try:
        jobs = json.loads(read_text(path))
    except (OSError, ValueError) as exc:
        log.warning("%s unreadable (%s): earlier drivers' placement groups are not checked", path, exc)
        return []
    return [str(j) for j in jobs] if isinstance(jobs, list) else []


def record_driver(study_path: str) -> list[str]:
    """Add this driver's job to the study's list; returns the earlier drivers' jobs."""
    earlier = drivers(study_path)
    job = current_job()
    write_text(f"{study_path.rstrip('/')}/{DRIVERS_FILE}", json.dumps([*earlier, job]))
    return [j for j in earlier if j != job]


def release_earlier_drivers(study_path: str) -> int:
    """On ``--resume``: remove the groups that the study's earlier drivers, now ended, left behind."""
    earlier = record_driver(study_path)
    if not earlier:
        return 0
    try:
        ended = ended_jobs(earlier)
    except Exception as exc:
        log.warning("could not ask Ray which of the study's earlier drivers ended (%s)", _reason(exc))
        return 0
    return release(ended, "the study's earlier drivers") if ended else 0
