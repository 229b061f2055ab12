"""Files on a device (or an operator's disk) that only their owner may read: enrollment
keys, privacy ledgers, kept answers, invitations (their pre-signed URLs let the holder
write the client's answer)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def write_private(path: str | os.PathLike[str], data: bytes, exclusive: bool = False) -> None:
    """Write a temporary file created 0600 (a chmod after writing would leave it readable
    for a moment), fsync it, then rename it over `path` (or, exclusive, link it:
    FileExistsError if `path` exists), and fsync the folder: a crash leaves the old file or
    the new one, never half, and a written file survives a power cut."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)  # in case of an unusual umask/filesystem
        if exclusive:
            os.link(tmp, path)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not every platform opens folders; the rename itself is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
