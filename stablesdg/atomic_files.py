"""Files written whole or not at all, and files made once however many jobs ask for them.

A reader never sees half a file: every write goes to a temporary file (or folder) beside its target and is renamed
onto it when complete. A failure to write is a one-line ``UserError`` naming the path.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from stablesdg.errors import UserError


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path`` atomically.

    Readers never see a half-written file: either the old file, or the complete new one.
    On error the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _create_temporary_beside(path)
    except OSError as err:
        raise UserError(f"cannot write in {path.parent}: {err.strerror}") from err
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {err.strerror}") from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _create_temporary_beside(path: Path) -> Path:
    """Create an empty, uniquely named file beside ``path`` and return it. Unlike ``tempfile.mkstemp`` (always mode
    0600) its mode follows the umask, as a plainly written file's would, so a shared store stays readable by the
    group."""
    for _ in range(100):
        candidate = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, f"no free temporary name beside {path}")


@contextmanager
def staged_folder(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty folder beside ``target`` to fill; when the block ends without error, put it at ``target`` whole,
    replacing what was there: a reader finds the old folder or the new one, never a mix. On error the staged folder
    is removed and ``target`` is left as it was. Its own failures to create or rename are one-line ``UserError``s.
    The staged folder's name is fixed, so one a killed run left behind is cleared by the next."""
    target = Path(target)
    staged, retired = (target.with_name(f".{target.name}.{state}") for state in ("partial", "replaced"))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        for leftover in (staged, retired):
            shutil.rmtree(leftover, ignore_errors=True)
        staged.mkdir()
    except OSError as err:
        raise UserError(f"cannot write in {target.parent}: {err.strerror}") from err
    try:
        yield staged
        try:
            if target.exists():
                os.replace(target, retired)
            os.replace(staged, target)
        except OSError as err:
            raise UserError(f"cannot write {target}: {err.strerror}") from err
        shutil.rmtree(retired, ignore_errors=True)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())


def write_json_atomic(path: str | os.PathLike, obj: Any, sort_keys: bool = True) -> None:
    """Write ``obj`` as indented JSON (keys sorted unless ``sort_keys=False``) to ``path`` atomically."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n").encode("utf-8"))


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, turning a missing or corrupt file into a one-line ``UserError``."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError as err:
        raise UserError(f"{path} does not exist") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err}); delete it to recompute") from err


def save_png_atomic(path: str | os.PathLike, image: Any) -> None:
    """Save a PIL image as PNG at ``path`` atomically."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def save_safetensors_atomic(path: str | os.PathLike, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> None:
    """Save ``tensors`` (moved to the CPU, detached, contiguous) as a safetensors file at ``path``, atomically.

    The same tensors and metadata always give the same bytes: safetensors writes ``__metadata__`` in a
    random per-process key order (safetensors issue #584), so its keys are put in sorted order here.
    """
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
    if metadata and len(metadata) > 1:
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + size])
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        canonical = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        data = data[:8] + canonical.ljust(size, b" ") + data[8 + size:]  # same length: only the key order changed
    write_bytes_atomic(path, data)


@contextmanager
def made_once(path: str | os.PathLike) -> Iterator[None]:
    """Hold the lock file ``<path>.lock`` while the body runs, so concurrent jobs that read ``path``, or make it where it
    is missing, take turns: the first makes it and the others read what it made. The lock file is removed when the
    body ends (while still held; filelock's waiters then take a lock on the path afresh), so finished work leaves
    no lock files in the store."""
    from filelock import FileLock

    lock_file = Path(f"{path}.lock")
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_file)):
        try:
            yield
        finally:
            lock_file.unlink(missing_ok=True)


def cached_tensor(path: str | os.PathLike, key: str, compute: Any, what: str) -> Any:
    """The tensor ``key`` of the safetensors file at ``path``, or ``compute()`` saved there first (``made_once``:
    concurrent jobs compute it once). A file that does not load is a one-line ``UserError`` naming it as ``what``."""
    from safetensors.torch import load_file

    with made_once(path):
        if Path(path).exists():
            try:
                return load_file(str(path))[key]
            except Exception as err:  # safetensors raises its own error types for truncated or tampered files
                raise UserError(f"{what} {path} is unreadable ({err}); delete it to recompute") from err
        tensor = compute()
        save_safetensors_atomic(path, {key: tensor})
        return tensor
