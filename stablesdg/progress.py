"""Progress bars that read well both in a terminal and in a log file.

In a terminal a bar is tqdm's. Where standard error goes to a file (SLURM, ``nohup``, CI), tqdm would redraw its
bar with carriage returns into one ever-longer line that Hydra's log file never sees; there the bar is logged
instead, as tqdm formats it, at each tenth of its total at most every ``LINE_EVERY_S`` seconds, and once when it
ends (``generate Pa:  40%|####      | 50/125 [04:01<06:02,  4.82s/batch]``).
"""
from __future__ import annotations

import io
import logging
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

log = logging.getLogger(__name__)

LINE_EVERY_S = 10.0
"""A logged bar writes no two lines closer than this (its last line excepted), so a short bar logs one line."""


class LoggedProgressBar(tqdm):
    """A tqdm bar that logs its state as a line instead of redrawing itself on the stream."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._tenths_drawn, self._n_logged = 0, 0
        self._line_at: float | None = None
        super().__init__(*args, file=io.StringIO(), **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        ending = self.disable  # close() sets it before its last display
        if msg is not None or not (self.n or ending):  # tqdm clearing its line, or its first draw at 0
            return True
        now = self._time()
        tenths = int(10 * self.n / self.total) if self.total else 0
        crossed_a_tenth, self._tenths_drawn = tenths > self._tenths_drawn, tenths
        since_line = now - (self.start_t if self._line_at is None else self._line_at)
        if (ending and self.n != self._n_logged) or (crossed_a_tenth and since_line >= LINE_EVERY_S):
            self._n_logged, self._line_at = self.n, now
            log.info("%s", str(self))  # formatted now: the record may be read after the bar has moved on
        return True


class ConsoleHandler(logging.StreamHandler):
    """Hydra's console log handler (``hydra.job_logging.handlers.console``), writing each record to ``sys.stdout`` as
    it is at that moment rather than as it was when logging was set up: where a live progress bar has redirected
    standard output (Lightning's Rich bar in a terminal), the line is printed above the bar instead of into it, where
    the bar's next redraw would erase it."""

    def __init__(self, stream: Any = None) -> None:
        super().__init__()

    @property
    def stream(self) -> Any:  # type: ignore[override]
        return sys.stdout

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


_console = {"first_process": True}  # False in DDP's later processes (quiet_beyond_first_process)


def quiet_beyond_first_process(rank: int) -> None:
    """Under DDP every process runs the whole command; the console shows the lines and bars of the first (``rank``
    0) only. In a later process the console handler passes errors alone and bars are logged, not drawn, and its own
    log file keeps its lines: ``<job name>_ddp_process_<rank>.log`` beside the first process's. Lightning names the
    Hydra job of the processes it starts so; one that SLURM's ``srun`` (or ``torchrun``) started runs the first's
    command, so its log file is moved from the first's here."""
    if rank == 0:
        return
    _console["first_process"] = False
    root = logging.getLogger()
    for handler in root.handlers[:]:
        if isinstance(handler, ConsoleHandler):
            handler.setLevel(logging.ERROR)
        elif isinstance(handler, logging.FileHandler) and not handler.baseFilename.endswith(f"_process_{rank}.log"):
            root.removeHandler(handler)
            handler.close()
            root.addHandler(_own_log_file(handler, rank))


def _own_log_file(shared: logging.FileHandler, rank: int) -> logging.FileHandler:
    """A handler like ``shared`` (level, format) that writes to process ``rank``'s own file beside ``shared``'s."""
    path = Path(shared.baseFilename)
    own = logging.FileHandler(path.with_name(f"{path.stem}_ddp_process_{rank}{path.suffix}"), encoding=shared.encoding)
    own.setLevel(shared.level)
    own.setFormatter(shared.formatter)
    return own


def progress_bar(iterable: Any = None, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)`` where standard error is a terminal (in DDP's first process), else a
    ``LoggedProgressBar`` with the same arguments, which logs at each tenth (at most every ``LINE_EVERY_S`` s) and
    at its end, and writes nothing to the stream."""
    bar = tqdm if sys.stderr.isatty() and _console["first_process"] else LoggedProgressBar
    return bar(iterable, **kwargs)
