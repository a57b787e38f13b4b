"""New files written whole: a temporary file next to the destination, then a rename.

``tempfile.mkstemp`` creates its file with mode 0600 whatever the umask, so results, reports and locks written
through it could be read by their owner alone (not by lab-mates, nor by a web server showing the report).
:func:`create_temp` creates the temporary file exclusively (``O_EXCL``, as mkstemp does) with mode 0666, which
the kernel reduces by the process's umask: the renamed file has the permission bits any other new file of the
user has (0644 under umask 022).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

#: Attempts at a fresh random name before giving up (a collision of 48 random bits is not expected even once).
_ATTEMPTS = 100


def create_temp(folder: Path, prefix: str, suffix: str = "") -> tuple[int, Path]:
    """A new, empty file in ``folder`` opened for writing: ``(file descriptor, path)``, mode 0666 & ~umask."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0)
    for _ in range(_ATTEMPTS):
        path = Path(folder) / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            return os.open(path, flags, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(f"{folder}: no free temporary name {prefix}*{suffix} after {_ATTEMPTS} attempts")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, rename: readers see the old or the new file, with the
    permission bits the umask gives new files (:func:`create_temp`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = create_temp(path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
