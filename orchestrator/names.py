"""The study's vocabulary, defined once: objectives, trial statuses, MLflow tag names and the study's file names.

Every table, report, tag and console line uses these words; nothing here imports more than the standard library,
so the light modules (``select``, ``verify``'s reading, the report) can share them without Ray or torch.
"""

from __future__ import annotations

from enum import StrEnum

OBJECTIVES = ("clean_acc", "robust_acc")  # both maximised: the study's front is over these two
MAXIMIZE = (True, True)


class Status(StrEnum):
    """A trial's status, in every record of the study (trials table, console, MLflow report).

    MLflow keeps its own run statuses (``FINISHED``, ``FAILED``, ``KILLED``, ``RUNNING``); Ray Tune its own
    (``TERMINATED``, ``ERROR``, ...). :data:`FROM_TUNE` and :data:`FROM_MLFLOW` translate them.
    """

    PENDING = "PENDING"  # created, not started yet
    RUNNING = "RUNNING"
    FINISHED = "FINISHED"  # trained its whole budget and reported its final objectives
    STOPPED = "STOPPED"  # stopped early by the scheduler at a rung: its figures are not final ones
    FAILED = "FAILED"  # ended by an error (its reason is recorded)
    INTERRUPTED = "INTERRUPTED"  # the study stopped before the trial ended; a resume continues it


FROM_TUNE = {"PENDING": Status.PENDING, "PAUSED": Status.PENDING, "RUNNING": Status.RUNNING,
             "TERMINATED": Status.FINISHED, "ERROR": Status.FAILED}
FROM_MLFLOW = {"SCHEDULED": Status.PENDING, "RUNNING": Status.RUNNING, "FINISHED": Status.FINISHED,
               "FAILED": Status.FAILED, "KILLED": Status.INTERRUPTED}

# MLflow tags (child runs are trials, the parent run is the study).
RUN_KIND_TAG = "run_kind"  # "study" on the parent, "trial" on a child
STUDY_TAG = "study_name"
TRIAL_TAG = "trial_id"
PARENT_TAG = "mlflow.parentRunId"
PARETO_TAG = "pareto"  # "true" / "false": on the search front
RANK_TAG = "pareto_rank"  # 0 = front, 1 = the next front, ...; -1 when an objective is NaN
FINISH_ORDER_TAG = "finish_order"
FAILURE_TAG = "failure_reason"  # one line; the whole error text is the run's artifact FAILURE_ARTIFACT
FAILURE_ARTIFACT = "failure/error.txt"
INTERRUPTED_TAG = "interrupted"  # "true" on a KILLED run (and the study's parent) that a stop signal ended
MODEL_URI_TAG = "model_uri"
MODEL_ERROR_TAG = "model_error"
TRIAL_STATUS_TAG = "trial_status"  # the Status word of an ended trial (MLflow's own run status is coarser)
STOPPED_AT_TAG = "stopped_at_epoch"  # the epoch a STOPPED trial was stopped at
MASKING_TAG = "gradient_masking_suspect"  # "true" when PGD's robust accuracy exceeds the objective's by too much
VERIFIED_TAG = "pareto_verified"  # "true" / "false": on the front of the verified (test, AutoAttack) figures
VERIFIED_RANK_TAG = "pareto_verified_rank"

# The study's files, under <storage>/<study>/.
SPEC_FILE = "study.yaml"  # the resolved preset; --resume reads it back
TRACKING_FILE = "tracking.yaml"  # the study's MLflow tracking URI; --resume and verify read it back
PENDING_RECORDS = "mlflow_pending.jsonl"  # MLflow records the study could not write; orchestrator.replay logs them
TRIALS_TABLE = "trials.parquet"
DRIVERS_FILE = "drivers.json"  # the Ray job ids of the study's drivers; a resume frees what ended ones left held
VERIFIED_TABLE = "verified.csv"
CONFIG_PREFIX = "config/"  # trials-table column of a training key: config/<dotted.key>
