"""The processes of ``finops run``: a supervisor that restarts its worker, and the worker's side
of that bargain.

``finops run`` (supervised, the default) starts ``finops run ... --no-supervise`` as a child and
waits for it (:func:`supervise`). The child's exit code says what happens next:

- 0 (stopped), 1 (an expected error a restart would not fix, e.g. a fenced instance or bad
  configuration) and 2 (bad usage) are final: the supervisor exits with the same code;
- :data:`EXIT_RESTART` (75: the worker asks for a clean restart, a stuck Kafka client or lost
  partitions), :data:`EXIT_CRASH` (70, EX_SOFTWARE: an unexpected error) and death by a signal
  restart the child after a backoff of 1 s, doubling up to 30 s (wall time).

The child dies with its parent (Linux ``PR_SET_PDEATHSIG``), so a killed supervisor leaves no
processor behind. SIGTERM and SIGINT to the supervisor are forwarded to the child and end the loop.

The worker (:func:`run_foreground`) runs a :class:`~finops.pipeline.Pipeline` until Ctrl-C or
SIGTERM, writes a metrics line (:class:`finops.metrics.PipelineMetrics`) at a fixed interval, and
exits with :data:`EXIT_RESTART` or :data:`EXIT_CRASH` through ``os._exit``: a thread stuck in a
Kafka call cannot be joined, so the process leaves without waiting for it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from .pipeline import Pipeline

EXIT_RESTART = 75  # a worker asks its supervisor for a clean restart
EXIT_CRASH = 70  # an unexpected error in a worker (EX_SOFTWARE): restarted too
FINAL_EXITS = (0, 1, 2)  # stopped, an expected error, bad usage: never restarted

Log = Callable[[str], None]


def supervise(command: list[str], *, log: Log) -> int:
    """Run ``command`` (an argv, e.g. ``[sys.executable, "-m", "finops.cli", "run", ...,
    "--no-supervise"]``) as a child; restart it after a crash or :data:`EXIT_RESTART`, with backoff.

    Returns the child's exit code once it is final (:data:`FINAL_EXITS`) or once the supervisor
    was asked to stop (SIGTERM or SIGINT, forwarded to the child; then the child's code, negative
    for a signal as in :class:`subprocess.Popen`). ``log`` gets one line per restart. Installs
    handlers for SIGTERM and SIGINT in this process.
    """
    stopping = False
    child: subprocess.Popen | None = None

    def forward(signum, _frame) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    backoff = 1.0
    while True:
        child = subprocess.Popen(command, preexec_fn=die_with_parent)
        rc = child.wait()
        if stopping or rc in FINAL_EXITS:
            return rc
        log(f"processors exited with code {rc}; restarting in {backoff:g} s")
        time.sleep(backoff)
        backoff = min(backoff * 2, 30.0)


def die_with_parent() -> None:
    """In a child between fork and exec: ask Linux for SIGTERM when the parent dies
    (``prctl(PR_SET_PDEATHSIG)``); a no-op where libc cannot be loaded (not Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def interrupt(*_args) -> None:
    """A signal handler that raises :class:`KeyboardInterrupt`: SIGTERM then ends the work like
    Ctrl-C, so ``finally`` blocks and context managers stop what was started."""
    raise KeyboardInterrupt


def sigterm_interrupts() -> None:
    """Make SIGTERM to this process raise :class:`KeyboardInterrupt` in the main thread."""
    signal.signal(signal.SIGTERM, interrupt)


def run_foreground(pipeline: Pipeline, *, metrics_every: float, stuck_after: float, log: Log,
                   log_error: Log) -> None:
    """Start ``pipeline`` and watch it until Ctrl-C or SIGTERM; then stop it and return.

    Every ``metrics_every`` seconds (wall time) one JSON line on stderr
    (:meth:`PipelineMetrics.emit`). ``stuck_after``: seconds a ledger transaction may stay open
    (:meth:`Pipeline.wait`). ``log`` gets ``"stopping"`` on Ctrl-C; ``log_error`` the text of a
    :class:`~finops.processors.runner.Stuck` or :class:`~finops.processors.runner.PartitionsLost`
    before the process exits with :data:`EXIT_RESTART`.

    Raises :class:`~finops.errors.FinopsError` (expected and final: fenced, bad configuration)
    after stopping the pipeline. Any other exception is a bug or an unforeseen fault: its
    traceback goes to stderr and the process exits with :data:`EXIT_CRASH`. Both exits use
    ``os._exit`` (threads are not joined). Also makes SIGTERM interrupt (:func:`sigterm_interrupts`)
    and tunes the garbage collector for a long run (:func:`finops.service.tune_gc`).
    """
    # imported here: the supervising parent never loads the processors (nor their Kafka client)
    from .errors import FinopsError
    from .metrics import PipelineMetrics
    from .processors.runner import PartitionsLost, Stuck
    from .service import tune_gc

    sigterm_interrupts()
    tune_gc()
    metrics = PipelineMetrics(pipeline)
    with pipeline:
        try:
            while not pipeline.wait(metrics_every, stuck_after):
                metrics.emit()
        except KeyboardInterrupt:
            log("stopping")
        except (Stuck, PartitionsLost) as exc:
            log_error(str(exc))
            sys.stderr.flush()
            os._exit(EXIT_RESTART)  # a stuck thread cannot be joined; the supervisor restarts us clean
        except FinopsError:
            raise  # expected and final (fenced, bad configuration): one line, exit 1
        except Exception:  # a bug or an unforeseen fault: show it, and let the supervisor restart us
            import traceback

            traceback.print_exc()
            sys.stderr.flush()
            os._exit(EXIT_CRASH)
