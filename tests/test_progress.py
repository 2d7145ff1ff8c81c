"""Progress bars: tqdm's in a terminal, a logged line per tenth where the output goes to a file."""

from __future__ import annotations

import io
import logging

import pytest
import tqdm.std

from stablesdg import progress
from stablesdg.progress import progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def clock(monkeypatch):
    """tqdm's clock, in seconds, moved on by the test."""
    now = [1000.0]
    monkeypatch.setattr(tqdm.std, "time", lambda: now[0])
    return now


def run_bar(clock, items: int, seconds_each: float, stop_at: int | None = None) -> None:
    for i in progress_bar(range(items), desc="generating Pa", unit="batch"):
        if i == stop_at:
            raise KeyboardInterrupt
        clock[0] += seconds_each


def logged(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == progress.__name__]


def test_in_a_file_a_long_bar_logs_a_line_at_each_tenth_and_writes_nothing_to_the_stream(clock, caplog, capsys):
    caplog.set_level(logging.INFO, logger=progress.__name__)
    run_bar(clock, items=50, seconds_each=3.0)  # a tenth takes 15 s, more than LINE_EVERY_S
    lines = logged(caplog)
    assert [line.split("|")[0] for line in lines] == [f"generating Pa: {p:3d}%" for p in range(10, 101, 10)]
    assert [line.split("| ")[1].split(" ")[0] for line in lines] == [f"{5 * k}/50" for k in range(1, 11)]
    assert lines[4].endswith("[01:15<01:15,  3.00s/batch]") and lines[-1].endswith("[02:30<00:00,  3.00s/batch]")
    assert capsys.readouterr().err == ""


def test_in_a_file_a_short_bar_logs_only_its_last_line(clock, caplog, capsys):
    caplog.set_level(logging.INFO, logger=progress.__name__)
    run_bar(clock, items=50, seconds_each=0.1)
    assert [line.split("|")[0] for line in logged(caplog)] == ["generating Pa: 100%"]
    assert capsys.readouterr().err == ""


def test_in_a_file_lines_come_no_closer_than_line_every_s(clock, caplog):
    caplog.set_level(logging.INFO, logger=progress.__name__)
    run_bar(clock, items=100, seconds_each=progress.LINE_EVERY_S / 25)  # a tenth every 0.4 × LINE_EVERY_S
    shown = [int(line.split("|")[0].split()[-1].rstrip("%")) for line in logged(caplog)]
    assert shown == [30, 60, 90, 100]


def test_in_a_file_an_interrupted_bar_logs_where_it_stopped(clock, caplog):
    caplog.set_level(logging.INFO, logger=progress.__name__)
    with pytest.raises(KeyboardInterrupt):
        run_bar(clock, items=50, seconds_each=0.1, stop_at=20)
    assert [line.split("| ")[1].split(" ")[0] for line in logged(caplog)] == ["20/50"]


def test_in_a_terminal_the_bar_is_tqdms_redrawn_in_place_and_logs_nothing(clock, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger=progress.__name__)
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    run_bar(clock, items=50, seconds_each=3.0)
    assert logged(caplog) == []
    drawn = terminal.getvalue()
    assert drawn.count("\r") > 10 and drawn.endswith("50/50 [02:30<00:00,  3.00s/batch]\n")


def test_a_bar_that_finishes_within_its_delay_shows_nothing_anywhere(clock, caplog, capsys):
    caplog.set_level(logging.INFO, logger=progress.__name__)
    for _ in progress_bar(range(10), desc="reading", delay=5.0):
        clock[0] += 0.1
    assert logged(caplog) == [] and capsys.readouterr().err == ""


def test_the_console_log_handler_writes_each_line_to_standard_output_as_it_is_then(monkeypatch):
    from conftest import compose_config

    console = compose_config([], return_hydra=True).hydra.job_logging.handlers.console
    assert console["class"] == "stablesdg.progress.ConsoleHandler" and console.stream == "ext://sys.stdout"
    handler = progress.ConsoleHandler(stream=Terminal())  # what logging was set up with
    handler.setFormatter(logging.Formatter("%(message)s"))
    before_the_bar, under_the_bar = Terminal(), Terminal()
    for stdout, message in ((before_the_bar, "GPU available: False"), (under_the_bar, "fit stopped")):
        monkeypatch.setattr("sys.stdout", stdout)  # Lightning's Rich bar, while live, redirects standard output
        handler.emit(logging.LogRecord("lightning", logging.INFO, __file__, 1, message, None, None))
    assert (before_the_bar.getvalue(), under_the_bar.getvalue()) == ("GPU available: False\n", "fit stopped\n")
