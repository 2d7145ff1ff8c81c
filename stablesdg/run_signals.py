"""SIGTERM (``kill <pid>``, a scheduler's pre-emption or time limit) where no training loop answers it: while a run
generates, scores, caches latents or checks its inputs, and in a pipeline between its steps.

Python's default ends the process at once: no line, exit code 143, and none of the run's clean-up (a finished
``result.json`` that a rerun had put aside while it worked stays gone). Here the signal stops the run where it is,
as Ctrl-C does, and the entry point says so in one line. Inside ``trainer.fit`` Lightning's handler answers it at a
step's end instead (``training.run_fit``), and saves the training's state there.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from stablesdg.errors import StoppedBySigterm


class SigtermReceived(BaseException):
    """Raised by the handler where the run is: a ``BaseException``, as Ctrl-C's ``KeyboardInterrupt`` is, so that
    no ``except Exception`` takes it (a bad image skipped, a library's fallback)."""


def _stop(signum: int, frame: Any) -> None:
    raise SigtermReceived()


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()  # the only thread where Python sets handlers


@contextmanager
def sigterm_stops_the_run(stage: str) -> Iterator[None]:
    """In this block, SIGTERM stops the run of ``stage`` where it is with ``StoppedBySigterm``'s one line:
    ``stage=<stage> stopped by SIGTERM; run the same command again to resume``. Only where SIGTERM has Python's
    default action, or this handler already (a pipeline's step, inside the pipeline's block, says its own stage): a
    handler of another's, such as submitit's, which leaves pre-emption to its own signal, is kept. The handler the
    process had is put back when the block ends."""
    before = signal.getsignal(signal.SIGTERM)
    if not _in_main_thread() or before not in (signal.SIG_DFL, _stop):
        yield
        return
    signal.signal(signal.SIGTERM, _stop)
    try:
        yield
    except SigtermReceived as err:
        raise StoppedBySigterm(f"stage={stage} stopped by SIGTERM; run the same command again to resume") from err
    finally:
        signal.signal(signal.SIGTERM, before)


@contextmanager
def sigterm_left_to_lightning() -> Iterator[None]:
    """Around ``trainer.fit``: SIGTERM has Python's default action where it had ``sigterm_stops_the_run``'s handler,
    so that the handler Lightning registers as the fit starts answers it alone (at the end of a step). Lightning
    calls every handler it finds beside its own, and this one would stop the step half done. Put back when the
    block ends."""
    before = signal.getsignal(signal.SIGTERM)
    if not _in_main_thread() or before is not _stop:
        yield
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def stopped_by_a_signal(exc: BaseException) -> bool:
    """Whether ``exc`` is a run stopped where it was by Ctrl-C or SIGTERM."""
    return isinstance(exc, (KeyboardInterrupt, SigtermReceived))
