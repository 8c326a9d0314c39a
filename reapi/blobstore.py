"""Blob stores under the CAS and the action cache, one per storage alias.

The CAS core talks to a store through this small interface; it never builds keys itself from
request text (keys come from reapi.digests). `FileBlobStore` works on the directory of a
BlobFileSystemStorage directly: the hot paths (FindMissingBlobs, batch reads) cannot afford
Django's File wrappers per blob.
"""

import contextlib
import ctypes
import ctypes.util
import itertools
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from reapi import atomic_files

log = logging.getLogger(__name__)

# Listings of blob directories kept to answer "absent" without a lookup per name: at most this
# many names in all (~100 MB), and only from directories unchanged for RACY_NS before listing.
MAX_LISTED_NAMES = 1_000_000
RACY_NS = 100_000_000
READ_BLOCK = 1024 * 1024
# Small files kept in memory after a read, checked by a stat on every later read.
SMALL_FILE_BYTES = 64 * 1024
SMALL_CACHE_BYTES = 32 * 1024 * 1024
# Spool names: unique across processes (pid and random part, new in a forked child such as
# a Celery worker) and within one (a counter).
_TMP_PREFIX = ""
_tmp_numbers = itertools.count()


def _new_tmp_prefix() -> None:
    global _TMP_PREFIX
    _TMP_PREFIX = f"{os.getpid()}-{secrets.token_hex(4)}-"


_new_tmp_prefix()
os.register_at_fork(after_in_child=_new_tmp_prefix)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def syncfs(path: Path) -> None:
    """Flush every dirty page of the filesystem holding `path` in one call.

    One syncfs for a batch of small blobs costs what one fsync does, where an fsync per blob
    would cap BatchUpdateBlobs at a few thousand blobs a second on this kind of disk.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


class GroupSync:
    """syncfs shared by concurrent writers (group commit).

    A caller needs a syncfs that began after its own writes: it waits for the next one to
    start, and every caller that arrives while one runs shares the one after it. Eight
    concurrent batches then cost two or three flushes of the disk, not eight.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cond = threading.Condition()
        self._started = 0
        self._done = 0
        self._running = False
        self._failed_at = 0
        self._failure: OSError | None = None

    def sync(self) -> None:
        with self._cond:
            target = self._started + 1
            while self._done < target:
                if self._running:
                    self._cond.wait()
                    continue
                self._running = True
                self._started += 1
                generation = self._started
                self._cond.release()
                failure = None
                try:
                    syncfs(self.path)
                except OSError as exc:
                    failure = exc
                finally:
                    self._cond.acquire()
                    self._running = False
                    self._done = generation
                    if failure is not None:
                        self._failed_at, self._failure = generation, failure
                    self._cond.notify_all()
            if self._failure is not None and self._failed_at >= target:
                raise OSError(self._failure.errno, f"syncfs failed: {self._failure.strerror}")


class BlobStore(Protocol):
    def stat(self, key: str) -> tuple[int, float] | None: ...
    def stat_many(self, keys: list[str], verify: bool = False) -> dict[str, tuple[int, float]]: ...
    def touch(self, keys: Iterable[str]) -> None: ...
    # `size` given (CAS reads: the size is part of the digest): an object of any other size
    # is answered None, known without reading it. Not given (action-cache entries): whatever
    # is stored.
    def get(self, key: str, size: int | None = None) -> bytes | None: ...
    def open(self, key: str, size: int | None = None) -> BinaryIO | None: ...
    def put(self, key: str, data: bytes) -> None: ...
    def put_many(self, items: list[tuple[str, bytes]]) -> None: ...
    def spool_dir(self) -> Path: ...
    def put_file(self, key: str, path: Path) -> None: ...
    def delete(self, key: str) -> None: ...
    def entries(self, prefix: str) -> Iterator[tuple[str, int, float]]: ...
    def evict(self, keys: list[str], untouched_since: float) -> int: ...


_HEX = frozenset("0123456789abcdef")


class FileBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / ".tmp"
        try:
            self.tmp.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            # Storage mounted read-only (or full) still serves reads; each write will fail
            # with its own error (reapi.faults).
            log.warning("%s: cannot create the spool %s: %s", self, self.tmp, exc)
        self._fd: int | None = None
        # Directory -> (mtime_ns, names): see _listing.
        self._listings: dict[str, tuple[int, frozenset[str]]] = {}
        self._listed_names = 0
        self._sync = GroupSync(root)
        self._fanned_out: set[str] = set()  # see _make_parent
        # Key -> ((inode, size, mtime_ns, ctime_ns), bytes) of small files read: see get.
        self._small: dict[str, tuple[tuple[int, int, int, int], bytes]] = {}
        self._small_bytes = 0

    def _root_fd(self, check: bool = False) -> int:
        """A descriptor of the root, so a lookup walks the key's 4 segments and not the root's
        too (FindMissingBlobs stats every digest this process has not seen: 2 µs each, not 4).

        `check`: make sure the root was not removed and made again (batches do, once; single
        lookups only after a miss, see _retry_root).
        """
        fd = self._fd
        if fd is None or (check and os.fstat(fd).st_nlink == 0):
            # A replaced descriptor is left open: another thread may still be using it.
            fd = self._fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        return fd

    def _retry_root(self, fd: int) -> int | None:
        """After a miss through `fd`: a fresh descriptor if the root was replaced, else None."""
        fresh = self._root_fd(check=True)
        return fresh if fresh != fd else None

    def __repr__(self) -> str:
        return f"FileBlobStore({self.root})"

    def _path(self, key: str) -> str:
        return os.path.join(self.root, key)

    def stat(self, key: str) -> tuple[int, float] | None:
        """(size, last touched) of a blob, or None when it is absent."""
        fd: int | None = self._root_fd()
        while fd is not None:
            try:
                st = os.stat(key, dir_fd=fd)
            except FileNotFoundError:
                fd = self._retry_root(fd)
                continue
            return st.st_size, max(st.st_atime, st.st_mtime)
        return None

    def stat_many(self, keys: list[str], verify: bool = False) -> dict[str, tuple[int, float]]:
        """(size, last touched) of each key present; absent keys are left out.

        `verify` asks an indexed store to check with storage itself: here, every key is
        looked up. Otherwise a key whose directory listing says it is absent is not: looking
        up a name never seen costs ~4 µs on ext4, reading a listing ~0.15 µs per entry.
        """
        found = {}
        fd = self._root_fd(check=True)
        by_dir: dict[str, list[str]] = {}
        for key in keys:
            directory, _, name = key.rpartition("/")
            by_dir.setdefault(directory, []).append(name)
        access, stat, exists = os.access, os.stat, os.F_OK
        for directory, names in by_dir.items():
            listed = None if verify else self._listing(fd, directory, len(names))
            for name in names:
                if listed is not None and name not in listed:
                    continue
                key = f"{directory}/{name}"
                # access() answers a miss without raising: 1.2 µs against stat's 2 µs.
                if access(key, exists, dir_fd=fd):
                    try:
                        st = stat(key, dir_fd=fd)
                    except FileNotFoundError:
                        continue
                    found[key] = (st.st_size, max(st.st_atime, st.st_mtime))
        return found

    def _listing(self, fd: int, directory: str, wanted: int) -> frozenset[str] | None:
        """The names in `directory`, or None where looking up `wanted` names one by one is
        cheaper than listing it.

        A listing is kept while the directory's mtime stays what it was before it was read:
        adding or removing a name changes it. A listing taken within RACY_NS of the last
        change is not kept, since a change in the same timestamp tick could go unseen
        (git's "racily clean" rule for its index).
        """
        try:
            st = os.stat(directory, dir_fd=fd)
        except FileNotFoundError:
            return frozenset()
        before = time.time_ns()
        cached = self._listings.get(directory)
        if cached is not None and cached[0] == st.st_mtime_ns:
            return cached[1]
        # An ext4 entry for a 64-character name takes 72 bytes of a directory block.
        if wanted * 2048 < st.st_size:
            return None
        try:
            names = frozenset(os.listdir(os.path.join(self.root, directory)))
        except FileNotFoundError:
            return frozenset()
        if before - st.st_mtime_ns > RACY_NS:
            if self._listed_names + len(names) > MAX_LISTED_NAMES:
                self._listings, self._listed_names = {}, 0
            self._listings[directory] = (st.st_mtime_ns, names)
            self._listed_names += len(names)
        return names

    def touch(self, keys: Iterable[str]) -> None:
        # The filesystem is mounted relatime, so reads do not move atime reliably: the
        # eviction job's notion of "recently used" comes from these explicit touches.
        for key in keys:
            with contextlib.suppress(FileNotFoundError):
                os.utime(self._path(key))

    def get(self, key: str, size: int | None = None) -> bytes | None:
        """The bytes under `key`, or None; None too when `size` is given and the file holds
        another number of bytes, known from its stat before anything is read.

        Plain descriptor calls: open()'s file object costs 9 system calls for a small blob
        (two fstat, two lseek, an ioctl), these 4, and each one lets go of the GIL that
        concurrent calls fight over. A small file read before is served from memory after
        one stat shows it is still the same file (inode, size, mtime, ctime): entries and
        blobs are only ever replaced by a rename or removed, never changed in place, and a
        removal is seen at once (GetActionResult: one system call instead of four).
        """
        root = self._root_fd()
        known = self._small.get(key)
        if known is not None:
            try:
                st = os.stat(key, dir_fd=root)
            except FileNotFoundError:
                st = None
            if st is not None and (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) == known[0]:
                return known[1] if size is None or size == st.st_size else None
            self._small.pop(key, None)
        fd = self._open_read(key, root)
        if fd is None:
            return None
        try:
            st = os.fstat(fd)
            if size is not None and size != st.st_size:
                return None
            # Asking for one byte more than the size confirms the end in the same call.
            data = os.read(fd, st.st_size + 1)
            if len(data) != st.st_size:
                chunks = [data]
                while chunk := os.read(fd, READ_BLOCK):
                    chunks.append(chunk)
                data = b"".join(chunks)
                return data if size is None or size == len(data) else None
        finally:
            os.close(fd)
        if len(data) <= SMALL_FILE_BYTES:
            self._remember(key, (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns), data)
        return data

    def _open_read(self, key: str, root: int) -> int | None:
        fd: int | None = root
        while fd is not None:
            try:
                return os.open(key, os.O_RDONLY | os.O_CLOEXEC, dir_fd=fd)
            except FileNotFoundError:
                fd = self._retry_root(fd)
        return None

    def _remember(self, key: str, identity: tuple[int, int, int, int], data: bytes) -> None:
        if self._small_bytes + len(data) > SMALL_CACHE_BYTES:
            # Forget the older half (dicts keep insertion order).
            for old in list(self._small)[: len(self._small) // 2 + 1]:
                dropped = self._small.pop(old, None)
                if dropped is not None:
                    self._small_bytes -= len(dropped[1])
        self._small[key] = (identity, data)
        self._small_bytes += len(data)

    def open(self, key: str, size: int | None = None) -> BinaryIO | None:
        try:
            f = open(self._path(key), "rb")  # noqa: SIM115 (the caller closes it)
        except FileNotFoundError:
            return None
        if size is not None and os.fstat(f.fileno()).st_size != size:
            f.close()
            return None
        return f

    def put(self, key: str, data: bytes) -> None:
        """One blob or action-cache entry: staged in the spool, fsynced, renamed into place
        (reapi.atomic_files), as put_many does a batch, through the root's descriptor and a
        counter's name: a Path per name, a uuid4 and a mkdir of the spool on every call cost
        an UpdateActionResult ~125 k instructions of its ~1,700 k."""
        root = self._root_fd()
        tmp = f".tmp/{_TMP_PREFIX}{next(_tmp_numbers)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666, dir_fd=root)
        except FileNotFoundError:
            # The root was made again, or its spool removed: both as they are now.
            root = self._root_fd(check=True)
            self.tmp.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666, dir_fd=root)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.rename(tmp, key, src_dir_fd=root, dst_dir_fd=root)
            except FileNotFoundError:
                self._make_parent(key)
                os.rename(tmp, key, src_dir_fd=root, dst_dir_fd=root)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=root)
            raise

    def put_many(self, items: list[tuple[str, bytes]]) -> None:
        """Publish small blobs: each staged in the spool, one shared syncfs, then renamed.

        Descriptor calls and counter names: open() and uuid4 cost 6 system calls a blob more,
        each letting go of the GIL that concurrent batches share.
        """
        if len(items) == 1:
            self.put(*items[0])
            return
        root = self._root_fd(check=True)
        staged: list[tuple[str, str]] = []
        try:
            for key, data in items:
                tmp = f".tmp/{_TMP_PREFIX}{next(_tmp_numbers)}.tmp"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666, dir_fd=root)
                staged.append((tmp, key))
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                finally:
                    os.close(fd)
            self._sync.sync()
            while staged:
                tmp, key = staged[-1]
                try:
                    os.rename(tmp, key, src_dir_fd=root, dst_dir_fd=root)
                except FileNotFoundError:
                    self._make_parent(key)
                    os.rename(tmp, key, src_dir_fd=root, dst_dir_fd=root)
                staged.pop()
        finally:
            # After a failure: whatever is still in the spool goes.
            for tmp, _ in staged:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=root)

    def spool_dir(self) -> Path:
        return self.tmp

    def put_file(self, key: str, path: Path) -> None:
        """Move a verified, fsynced file from spool_dir() to its final name."""
        atomic_files.replace(path, Path(self._path(key)), lambda: self._make_parent(key))

    def _make_parent(self, key: str) -> None:
        """Make the directory `key` belongs in.

        Keys fan out by two hex digits of their hash (reapi.digests.cas_key): the first miss
        in a fan-out makes all 256 of its directories. Made one by one, each first write into
        another one paid a failed rename and a mkdir, and a fresh tenant's first 2,000 small
        blobs went in at a quarter of the rate of the next 2,000 (one channel, 8 threads).
        """
        parent = os.path.dirname(self._path(key))
        fan_out, name = os.path.split(parent)
        os.makedirs(parent, exist_ok=True)
        if len(name) == 2 and all(c in _HEX for c in name) and fan_out not in self._fanned_out:
            self._fanned_out.add(fan_out)  # concurrent batches would each make all 256 again
            for i in range(256):
                with contextlib.suppress(FileExistsError):
                    os.mkdir(os.path.join(fan_out, f"{i:02x}"))

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(key))

    def entries(self, prefix: str) -> Iterator[tuple[str, int, float]]:
        """(key, size, last access) of every blob under `prefix`."""
        base = Path(self._path(prefix))
        if not base.exists():
            return
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                full = os.path.join(dirpath, name)
                try:
                    st = os.stat(full)
                except FileNotFoundError:
                    continue
                yield os.path.relpath(full, self.root), st.st_size, max(st.st_atime, st.st_mtime)

    def evict(self, keys: list[str], untouched_since: float) -> int:
        """Delete those of `keys` not touched since `untouched_since`; returns the bytes freed.

        The touch time is read again here, just before the unlink, so a blob used since the
        eviction job listed it stays.
        """
        freed = 0
        for key in keys:
            st = self.stat(key)
            if st is not None and st[1] < untouched_since:
                self.delete(key)
                freed += st[0]
        return freed
