"""Atomic file writes: a crash leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from lensgen.errors import UserError


def current_umask() -> int:
    """The process umask, read without setting it: os.umask can only be read by changing it, which races
    with other threads creating files, so Linux's /proc/self/status is asked first."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _why(err: OSError) -> str:
    return err.strerror or str(err)


def _create_temp(path: Path) -> tuple[int, str]:
    """The folder of `path` and a temp file in it; a failure (no such place, read-only, a file in the way)
    is the user's to fix, so it is a UserError naming the path."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot write {path}: cannot create its folder {path.parent}: {_why(err)}") from err
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise UserError(f"cannot write {path}: cannot create a file in {path.parent}: {_why(err)}") from err
    # mkstemp makes 0600 files; the result should get the mode any tool gives a new file (0644 under umask 022)
    with contextlib.suppress(OSError):  # a file system without modes keeps its own
        os.fchmod(fd, 0o666 & ~current_umask())
    return fd, tmp


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside `path`; on success fsync and rename it over `path`.

    The file gets the user's umask (not mkstemp's 0600). A path that cannot be written raises UserError."""
    path = Path(path)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        try:
            os.replace(tmp, path)
        except OSError as err:
            raise UserError(f"cannot write {path}: {_why(err)}") from err
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_writable(path: str | os.PathLike) -> None:
    """Fail now, before hours of work, if `path` cannot be written later: probe its nearest existing folder
    with a temp file (the same call atomic_open makes), and refuse a path that is a folder."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a folder")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"cannot write {path}: {folder} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".lensgen-probe.", dir=folder)
    except OSError as err:
        raise UserError(f"cannot write {path}: cannot create a file in {folder}: {_why(err)}") from err
    os.close(fd)
    os.unlink(probe)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")
