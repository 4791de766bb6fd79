"""The shape every long-running processor shares: ``step()`` until ``stop()``, then ``close()``."""

from __future__ import annotations

import gc
import threading


def tune_gc() -> None:
    """For long-running processors: move what start-up built out of the collector's way and
    collect young objects less often. Batches make many short-lived objects and few cycles;
    the default thresholds spend a large share of the sink's row building in the collector."""
    gc.freeze()
    gc.set_threshold(200_000, 50, 1000)


class Service:
    """Subclasses implement ``step`` (one unit of work, bounded in time) and ``close``."""

    def __init__(self) -> None:
        self._stop = threading.Event()

    def stop(self) -> None:
        """Ask the loop to end after the current step (thread-safe)."""
        self._stop.set()

    def run(self) -> None:
        """``step()`` until :meth:`stop`, then ``close()``, also when a step raises (the error propagates)."""
        try:
            while not self._stop.is_set():
                self.step()
        finally:
            self.close()

    def step(self) -> int:
        """One unit of work, bounded in (wall) time so a stop is noticed; how many records it handled."""
        raise NotImplementedError

    def close(self) -> None:
        """Release clients; called once when the loop ends."""
