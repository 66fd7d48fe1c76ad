"""How ``orchestrator/tune.py`` exits: with its status, after every exit handler (Ray's shutdown of a local Ray,
logging's flush) and with everything written to stdout, but without the interpreter's teardown; a non-daemon
thread still running gets the normal exit, which waits for it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import REPO

_SCRIPT = textwrap.dedent("""
    import atexit, sys, threading, time
    sys.path.insert(0, sys.argv[1])
    sys.argv[0] = sys.argv[1] + "/orchestrator/tune.py"
    from orchestrator.tune import exit_now

    marker = sys.argv[2]
    atexit.register(lambda: open(marker, "a").write("handler\\n"))


    class Teardown:  # what the interpreter's teardown would finalize
        def __del__(self, open=open, marker=marker):  # builtins may be gone by then
            open(marker, "a").write("teardown\\n")


    kept = Teardown()
    if sys.argv[3] == "thread":  # still working when the study returns
        def work():
            time.sleep(1)
            open(marker, "a").write("thread\\n")
        threading.Thread(target=work).start()
    sys.stdout.write("closing line, no newline")  # left in the buffer of a pipe
    exit_now(7)
""")


def _run(tmp_path: Path, mode: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    marker = tmp_path / "marker"
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(REPO), str(marker), mode], capture_output=True,
                          text=True, timeout=120)
    return proc, marker.read_text().splitlines() if marker.exists() else []


def test_exit_now_keeps_the_status_the_output_and_the_exit_handlers(tmp_path: Path) -> None:
    proc, marks = _run(tmp_path, "plain")
    assert proc.returncode == 7, proc.stderr
    assert proc.stdout == "closing line, no newline"
    assert marks == ["handler"]  # and no teardown: the memory went back to the OS with the process
    assert proc.stderr == ""


def test_exit_now_waits_for_a_running_thread_as_a_normal_exit_does(tmp_path: Path) -> None:
    proc, marks = _run(tmp_path, "thread")
    assert proc.returncode == 7, proc.stderr
    assert proc.stdout == "closing line, no newline"
    assert marks == ["thread", "handler", "teardown"]  # the thread finished first, as in a normal exit
