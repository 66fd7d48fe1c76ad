"""What a trial's Ray Train controller runs of ours: the callback that hands rank 0's reports to Tune.

It lives apart from :mod:`orchestrator.trainable` because a controller started as an actor of its own (the fallback
of :func:`orchestrator.ray_internals.lean_torch_trainer`) imports the module of every callback it is given: this
one needs Ray Tune and pyarrow, not the method library.
"""

from __future__ import annotations

from typing import Any

from ray import tune
from ray.train.v2.api.callback import UserCallback
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY, TuneReportCallback

from .storage import storage_uri


class URIReportCallback(UserCallback):
    """Rank 0's metrics to Tune, as Ray's ``TuneReportCallback``, with ``checkpoint_path`` as a URI and ``node_ids``.

    Ray puts the checkpoint's path on its filesystem there (``bucket/key`` for S3); the tracker needs a location it
    can open, so the storage root's URI goes back in front. Every rank reports its ``node_id``; Tune gets
    ``node_ids``, the sorted distinct Ray node ids of all ranks, comma-joined (where the DDP run ran).

    ``in_process``: the controller runs in the Tune trial's own process (and thread), so a report is a plain
    ``tune.report``. Otherwise it goes through ``TuneReportCallback``'s queue, an actor shared with the trial.
    Create it inside the Tune trial.
    """

    def __init__(self, train_storage: str, in_process: bool) -> None:
        self.train_storage = train_storage
        self._queue = None if in_process else TuneReportCallback()

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        first = dict(metrics[0]) if metrics else {}
        first.pop("node_id", None)
        first["node_ids"] = ",".join(sorted({str(m["node_id"]) for m in metrics if "node_id" in m}))
        if checkpoint is not None:
            first[CHECKPOINT_PATH_KEY] = storage_uri(self.train_storage, str(checkpoint.path))
        if self._queue is None:
            tune.report(first)
        else:
            self._queue.after_report(run_context, [first], None)
