"""Stopping a study: SIGINT (Ctrl-C) and SIGTERM end it the way Ray Tune ends a run on SIGINT.

Ray Tune 2.60 (``ray/tune/tune.py``, ``_setup_signal_catching``) installs a SIGINT handler when ``Tuner.fit``
starts, before it calls the callbacks' ``setup``. The first SIGINT ends Tune's loop: Tune saves the experiment
state (unfinished trials are RUNNING there, so ``Tuner.restore`` continues them), stops the trial actors, which
sets their in-memory status to TERMINATED without calling ``on_trial_complete``
(``TuneController._cleanup_trials``), and calls the callbacks' ``on_experiment_end``; ``fit`` then returns
normally. Its handler also puts back the handler that was there before, so a second SIGINT stops at once.

Tune does nothing for SIGTERM, and ``ray.init`` sets SIGTERM to ``sys.exit``. :func:`install` (after
``ray.init``, before ``fit``) makes SIGTERM do what SIGINT does, and :func:`watch_tune` (from a callback's
``setup``) wraps Tune's handler, so :func:`received` tells the driver which signal stopped the study.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

_received: list[str] = []  # the stop signals this process got, in order
_forwarding = threading.local()  # set while SIGTERM runs the SIGINT handler, which must not count it again


def received() -> str | None:
    """The name of the first stop signal received (``SIGINT`` or ``SIGTERM``), or None."""
    return _received[0] if _received else None


def signals() -> list[str]:
    """Every stop signal received, in order."""
    return list(_received)


def _note(signum: int) -> None:
    _received.append(signal.Signals(signum).name)


def _stop_now(signum: int, frame: FrameType | None) -> None:
    """SIGINT outside Tune's loop (before it, or a second signal): stop at once."""
    _note(signum)
    raise KeyboardInterrupt


def _forward_sigterm(signum: int, frame: FrameType | None) -> None:
    """SIGTERM: do what the SIGINT handler in place does (Tune's graceful stop while ``fit`` runs)."""
    _note(signum)
    handler: Any = signal.getsignal(signal.SIGINT)
    if handler is _stop_now or not callable(handler):
        raise KeyboardInterrupt
    _forwarding.active = True
    try:
        handler(signal.SIGINT, frame)
    finally:
        _forwarding.active = False


def install() -> None:
    """Handle SIGINT and SIGTERM in this (main) thread; call after ``ray.init`` and before ``Tuner.fit``."""
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGINT, _stop_now)  # what Tune's own handler puts back after the first SIGINT
    signal.signal(signal.SIGTERM, _forward_sigterm)


def watch_tune() -> None:
    """Wrap the SIGINT handler Tune installed for ``fit``, to remember the signal; call from a callback's setup."""
    tune_handler: Any = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(tune_handler) \
            or tune_handler in (_stop_now, signal.default_int_handler) or getattr(tune_handler, "_wraps_tune", False):
        return  # not inside Tuner.fit (or Tune's handler is off: TUNE_DISABLE_SIGINT_HANDLER), or wrapped already

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        if not getattr(_forwarding, "active", False):
            _note(signum)
        tune_handler(signum, frame)

    on_sigint._wraps_tune = True  # type: ignore[attr-defined]
    signal.signal(signal.SIGINT, on_sigint)
