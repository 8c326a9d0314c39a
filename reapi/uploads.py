"""Partial ByteStream uploads: where they wait, what they cost their tenant, when they go.

A Write that ends before finish_write keeps what arrived, so the client can ask
QueryWriteStatus and resume from there (REAPI v2, ByteStream Write and QueryWriteStatus).
Each partial waits in its store's spool as `partial/<tenant>/<name>.part`, so its bytes are
known to be the tenant's: the eviction job counts them in the tenant's usage as bytes it
cannot evict (reapi.eviction), and the quota gate refuses a write that would take the tenant
past its hard limit counting them (reapi.quotas). A client cannot park bytes for free.

The maintenance job removes every spool file untouched for REAPI_UPLOAD_EXPIRY_HOURS: partials
a client abandoned, and staging files a crash left behind. A write appends to its partial, so
a partial in use is never old. An upload holds a shared lock (flock) on its partial while it
writes; expiry takes an exclusive one without waiting and skips the file when it cannot, so it
never removes a partial a stream holds, even one resuming after a long pause.
"""

import fcntl
import os
import stat
import uuid
from pathlib import Path
from typing import BinaryIO

PARTIAL_DIR = "partial"


def partial_path(spool: Path, tenant: str, name: str) -> Path:
    return spool / PARTIAL_DIR / tenant / f"{name}.part"


def start(path: Path) -> BinaryIO:
    """A new, empty partial at `path`, open for writing and locked; it replaces any earlier one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{uuid.uuid4().hex}.new")
    f = open(tmp, "w+b")  # noqa: SIM115 (held open across the stream's messages)
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_SH)
        os.replace(tmp, path)
    except BaseException:
        f.close()
        tmp.unlink(missing_ok=True)
        raise
    return f


def resume(path: Path) -> BinaryIO | None:
    """The partial at `path`, open at its start for reading and appending and locked, or None
    when there is none (never written, or expired)."""
    while True:
        try:
            f = open(path, "r+b")  # noqa: SIM115 (held open across the stream's messages)
        except FileNotFoundError:
            return None
        fcntl.flock(f.fileno(), fcntl.LOCK_SH)
        if os.fstat(f.fileno()).st_nlink:
            return f
        # Expired between the open and the lock: look again (there is none, or a new one).
        f.close()


def parked_bytes(spool: Path, tenant: str) -> int:
    """Bytes of the tenant's partial uploads in this spool."""
    total = 0
    try:
        entries = list(os.scandir(spool / PARTIAL_DIR / tenant))
    except FileNotFoundError:
        return 0
    for entry in entries:
        try:
            total += entry.stat(follow_symlinks=False).st_size
        except FileNotFoundError:
            continue  # finished or expired meanwhile
    return total


def expire(spool: Path, cutoff: float) -> tuple[int, int]:
    """Remove the files under `spool` last written before `cutoff` that no upload holds.

    Returns (files removed, bytes freed).
    """
    files = freed = 0
    for dirpath, _dirs, names in os.walk(spool):
        for name in names:
            size = _remove_if_stale(os.path.join(dirpath, name), cutoff)
            if size is not None:
                files += 1
                freed += size
    return files, freed


def _remove_if_stale(path: str, cutoff: float) -> int | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_mtime >= cutoff:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None  # a stream holds it
        st = os.fstat(fd)
        if st.st_nlink == 0 or st.st_mtime >= cutoff:
            return None  # finished, or written to, since the first look
        try:
            if os.lstat(path).st_ino != st.st_ino:
                return None  # a fresh start of the same upload took the name
        except FileNotFoundError:
            return None
        os.unlink(path)
        return st.st_size
    finally:
        os.close(fd)
