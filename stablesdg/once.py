"""Lines said once per process: a pipeline's or multirun's steps set the same dataset up, train on the same split and
use the same model and devices, again and again, and a warning (or a note) about it is said at the first."""
from __future__ import annotations

import logging
from typing import Any

_said: set[tuple[str, str]] = set()  # (logger name, text) of the lines said in this process


def first_time(logger_name: str, text: str) -> bool:
    """Whether this process says ``text`` on the logger named ``logger_name`` for the first time; it is noted as said."""
    if (logger_name, text) in _said:
        return False
    _said.add((logger_name, text))
    return True


def log_once(log: logging.Logger, level: int, message: str, *args: Any) -> None:
    """``log.log(level, message % args)`` unless this process has said that text on ``log`` before."""
    text = message % args
    if first_time(log.name, text):
        log.log(level, "%s", text)


def warn_once(log: logging.Logger, message: str, *args: Any) -> None:
    """``log.warning(message % args)`` unless this process has said that text on ``log`` before."""
    log_once(log, logging.WARNING, message, *args)


def info_once(log: logging.Logger, message: str, *args: Any) -> None:
    """``log.info(message % args)`` unless this process has said that text on ``log`` before."""
    log_once(log, logging.INFO, message, *args)
