"""The one exception type for problems a user can fix (bad input, missing files, bad settings)."""

import errno
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from omegaconf.errors import MissingMandatoryValue

# Storage problems the user fixes (space, permissions, a read-only or missing mount, a file where a folder belongs or
# the reverse), shown as one line.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR,
                  errno.EEXIST, errno.EISDIR}


class UserError(Exception):
    """A problem with the user's input or set-up.

    The entry point prints its message as a single line and exits non-zero without a
    stack trace (unless ``HYDRA_FULL_ERROR=1``). Messages name the offending path or value
    and, where possible, say how to fix it.
    """


class RaisedOnEveryRank(UserError):
    """A problem every DDP process meets alike, at the same step with the same weights (a diverged training): only
    rank 0 prints its line, once for the command."""


class StoppedBySigterm(RaisedOnEveryRank):
    """Training stopped by SIGTERM; every DDP process stops at the same step."""


def say(line: str, stream: TextIO | None = None) -> None:
    """Write ``line`` and its newline to ``stream`` (standard error when None) in one write, and flush it. A joblib
    worker's streams are unbuffered, so ``print``'s two writes (the text, then the newline) let a line of another job
    sharing the terminal or log run on from it."""
    stream = sys.stderr if stream is None else stream
    stream.write(f"{line}\n")
    stream.flush()


def is_integer(value: object) -> bool:
    """Whether ``value`` is an ``int`` and not a bool (``True`` is an int to Python, not a count to a user)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """Whether ``value`` is an ``int`` or ``float`` and not a bool (nan and inf are numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def require_integer(key: str, value: object, minimum: int, wanted: str) -> int:
    """``value`` when it is an integer of at least ``minimum``; else a one-line ``UserError`` "``key`` must be
    ``wanted``, got ``value``". A bool or ``1.5`` is not one (Python's ``int`` would have made them 1)."""
    if not is_integer(value) or value < minimum:
        raise UserError(f"{key} must be {wanted}, got {value}")
    return value


def require_folder_setting(key: str, value: object) -> None:
    """A one-line ``UserError`` naming ``key`` when that folder setting is null, empty or blank: as a path it would
    mean the current folder, or the filesystem's root where a subfolder is joined to it (``${paths.logs}/runs``).
    An unset shell variable (``paths.artifacts=$STORE``) is the usual cause. Likewise when it names a file, or a
    path inside one (where no folder can be made)."""
    if value is None or not str(value).strip():
        raise UserError(f"{key}={'null' if value is None else repr(value)} names no folder; set {key}=<folder> "
                        "(an unset shell variable leaves it empty)")
    problem = file_in_the_way(value)
    if problem:
        raise UserError(f"{key}={value} {problem}")


def file_in_the_way(folder: object) -> str | None:
    """Why no folder can be at ``folder``, in words that follow it: ``is a file, not a folder``, or ``cannot be made:
    <file> is a file, not a folder`` for a path inside a file; None where a folder is there or can be made."""
    folder = Path(str(folder)).expanduser()
    file = next((p for p in (folder, *folder.parents) if _is_file(p)), None)
    if file is None:
        return None
    return "is a file, not a folder" if file == folder else f"cannot be made: {file} is a file, not a folder"


def _is_file(path: Path) -> bool:
    try:
        return path.exists() and not path.is_dir()
    except OSError:  # a folder it may not look into: whether it can be written is for the write to say
        return False


def not_a_file(path: Path) -> str:
    """Why ``path``, which a setting names as a file to read, cannot be read, in words that follow it: ``is a folder,
    not a file``, or ``does not exist``."""
    return "is a folder, not a file" if path.is_dir() else "does not exist"


def first_line(err: BaseException) -> str:
    """The first line of ``err``'s message, or its type's name when the message is empty: the part of a library's
    error that fits into a one-line ``UserError``."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


FOLDER_SETTINGS = frozenset({"root", "out", "source"})  # the last part of the settings that name a folder


def unset_setting(key: str) -> UserError:
    """The one-line error for a setting ``key`` left without a value (``???`` in its config), with what to give it:
    ``<folder>`` for the settings that name one (``FOLDER_SETTINGS``), else ``<value>``."""
    wanted = "<folder>" if key.rsplit(".", 1)[-1] in FOLDER_SETTINGS else "<value>"
    return UserError(f"{key} has no value (??? in its config); set it: {key}={wanted}")


def find_user_error(exc: BaseException | None,
                    storage_hint: str = "check paths.artifacts, paths.logs and free space") -> UserError | None:
    """The ``UserError`` behind ``exc`` (itself, or its cause/context chain), or None.

    Hydra's ``instantiate`` and other wrappers re-raise errors inside their own exception
    types; the user's problem is still the ``UserError`` at the bottom. Storage errors and settings left
    mandatory (``???``) and W&B's errors (no network, a refused key) become one too; a storage error's message ends
    in ``storage_hint``.
    """
    for exc in exception_chain(exc):
        if isinstance(exc, UserError):
            return exc
        if isinstance(exc, MissingMandatoryValue) and getattr(exc, "full_key", None):
            return unset_setting(exc.full_key)
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS and exc.filename:
            return UserError(f"cannot write or read {exc.filename}: {exc.strerror} ({storage_hint})")
        if type(exc).__module__.startswith("wandb.errors"):  # no network, a refused key: not a fault of the run
            return UserError(f"W&B: {first_line(exc)}; log offline (logger.mode=offline; the report: WANDB_MODE="
                             "offline) and upload later with `wandb sync`")
    return None


def exception_chain(exc: BaseException | None) -> Iterator[BaseException]:
    """``exc``, the exception it was raised from or during, and so on down the chain, each once."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        yield exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
