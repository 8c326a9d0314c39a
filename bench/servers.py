"""The servers under test: ours (`manage.py reapi serve`, auth on) and BuildGrid, each in a
child process on a free loopback port, in a throw-away data directory, always stopped."""

import fcntl
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import grpc

from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from tests.support.servers import free_port, stop_process

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
# Newest first. BuildGrid 0.5 and later need a newer Python than ours (3.11); the pins are
# exact so two runs compare the same server.
BUILDGRID_VERSIONS = ("0.4.4", "0.4.3", "0.3.5")
BUILDGRID_VENV = BENCH / ".venv-buildgrid"


def wait_serving(
    address: str, proc: subprocess.Popen[bytes], log: Path, metadata: tuple[tuple[str, str], ...]
) -> None:
    """Wait until GetCapabilities answers (both servers serve it), or fail with the log."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early ({proc.returncode}):\n{log.read_text()[-4000:]}")
        try:
            with grpc.insecure_channel(address) as ch:
                re_grpc.CapabilitiesStub(ch).GetCapabilities(
                    re_pb2.GetCapabilitiesRequest(), metadata=metadata, timeout=1
                )
            return
        except grpc.RpcError:
            time.sleep(0.2)
    raise RuntimeError(f"server on {address} did not answer within 60 s:\n{log.read_text()[-4000:]}")


class Ours:
    """A throw-away DATA_DIR with a migrated SQLite database, one tenant and one PAT."""

    TENANT = "bench"

    def __init__(self, workdir: Path, name: str = "ours") -> None:
        self.data_dir = apart(workdir, name)
        self.env = {
            **os.environ,
            "DATA_DIR": str(self.data_dir),
            "DJANGO_SETTINGS_MODULE": "portal.settings",
        }
        for name in ("DATABASE_URL", "REAPI_STORAGE_INTERNAL", "REAPI_STORAGE_EXTERNAL", "REAPI_TLS_CERT"):
            self.env.pop(name, None)
        self.pat = ""

    def manage(self, command: str, *args: str) -> str:
        # System checks cover the portal, which the bench does not serve.
        done = subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), command, "--skip-checks", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        if done.returncode != 0:
            raise RuntimeError(f"manage.py {command} {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    def prepare(self, mode: str = "", ci_accepts: str = "") -> None:
        """`mode`: the tenant's cache mode (default: the default, independent); `ci_accepts`:
        what its CI accepts from workstations (default: the default, all)."""
        self.data_dir.mkdir(parents=True)
        self.manage("migrate", "--no-input", "-v0")
        self.add_tenant(self.TENANT, mode, ci_accepts)

    def add_tenant(self, slug: str, mode: str = "", ci_accepts: str = "") -> None:
        """A tenant with an empty cache and a PAT of its own, which `metadata` sends from now on."""
        self.manage("tenant", "create", slug)
        if mode:
            self.manage("tenant", "mode", slug, mode)
        if ci_accepts:
            self.manage("tenant", "ci-accepts", slug, ci_accepts)
        self.manage("tenant", "add-member", slug, "bencher", "--role", "admin")
        out = self.manage("token", "issue", "--tenant", slug, "--user", "bencher", "--name", "bench")
        self.pat = out.strip().splitlines()[-1]

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-aspect", self.pat),)

    def serve(
        self, processes: int, threads: int | None, cluster: str = "external", observed: bool = True
    ) -> "Running":
        """`observed`: metrics counted (a /metrics listener) and a request-log line per call, as
        a production server runs; off: neither (no listener, REAPI_REQUEST_LOG=errors)."""
        port = free_port()
        argv = [
            sys.executable,
            str(ROOT / "manage.py"),
            "reapi",
            "serve",
            "--cluster",
            cluster,
            "--listen",
            f"127.0.0.1:{port}",
            "--processes",
            str(processes),
        ]
        if threads:
            argv += ["--threads", str(threads)]
        env = {**self.env, "REAPI_REQUEST_LOG": "all" if observed else "errors"}
        if observed:
            argv += ["--metrics-listen", f"127.0.0.1:{free_port()}"]
        log = self.data_dir / f"serve-{port}.log"
        return Running(argv, ROOT, env, f"127.0.0.1:{port}", log, self.metadata)


class Running:
    def __init__(
        self,
        argv: list[str],
        cwd: Path,
        env: dict[str, str],
        address: str,
        log: Path,
        metadata: tuple[tuple[str, str], ...],
    ) -> None:
        self.argv, self.cwd, self.env, self.address, self.log = argv, cwd, env, address, log
        self.metadata = metadata
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> "Running":
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv, cwd=self.cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        try:
            wait_serving(self.address, self.proc, self.log, self.metadata)
        except BaseException:
            stop_process(self.proc, timeout=20)
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stop_process(self.proc, timeout=20)


# --- BuildGrid ------------------------------------------------------------------------------


class BuildGridUnavailable(RuntimeError):
    pass


def _installed_buildgrid() -> str | None:
    marker = BUILDGRID_VENV / "installed-version"
    if marker.exists() and (BUILDGRID_VENV / "bin" / "bgd").exists():
        return marker.read_text().strip()
    return None


def install_buildgrid(log: Callable[[str], None]) -> str:
    """BuildGrid from PyPI into its own virtualenv (reused when present); its version."""
    found = _installed_buildgrid()
    if found in BUILDGRID_VERSIONS:
        return found
    errors = []
    for version in BUILDGRID_VERSIONS:
        log(f"installing buildgrid=={version} into {BUILDGRID_VENV.relative_to(ROOT)} …")
        shutil.rmtree(BUILDGRID_VENV, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(BUILDGRID_VENV)], check=True)
        pip = [
            str(BUILDGRID_VENV / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
        ]
        done = subprocess.run([*pip, f"buildgrid=={version}"], capture_output=True, text=True, timeout=600)
        if done.returncode == 0 and (BUILDGRID_VENV / "bin" / "bgd").exists():
            (BUILDGRID_VENV / "installed-version").write_text(version + "\n")
            return version
        errors.append(f"buildgrid=={version}: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    shutil.rmtree(BUILDGRID_VENV, ignore_errors=True)
    raise BuildGridUnavailable("could not install BuildGrid from PyPI:\n  " + "\n  ".join(errors))


BUILDGRID_CONFIG = """\
# BuildGrid for the bench: CAS and ByteStream on disk; the action cache is BuildGrid's LRU
# map of action digest -> ActionResult message, the message itself stored in the same disk
# CAS (BuildGrid has no other disk-backed action cache), with completeness checking.
server:
  - !channel
    address: "{address}"
    insecure-mode: true
authorization:
  method: none
storages:
  - !disk-storage &cas
    path: {cas}
caches:
  - !lru-action-cache &ac
    storage: *cas
    max-cached-refs: 100000
    allow-updates: true
    cache-failed-actions: true
instances:
  - name: ""
    services:
      - !cas
        storage: *cas
      - !bytestream
        storage: *cas
      - !action-cache
        cache: *ac
thread-pool-size: {threads}
"""


def buildgrid(workdir: Path, threads: int = 32, name: str = "buildgrid") -> Running:
    home = apart(workdir, name)
    (home / "cas").mkdir(parents=True)
    port = free_port()
    config = home / "bgd.yml"
    config.write_text(BUILDGRID_CONFIG.format(address=f"127.0.0.1:{port}", cas=home / "cas", threads=threads))
    argv = [str(BUILDGRID_VENV / "bin" / "bgd"), "server", "start", str(config)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO", "DATA_DIR", "DATABASE"))}
    return Running(argv, home, env, f"127.0.0.1:{port}", home / "bgd.log", ())


def bare(workdir: Path) -> Running:
    """bench/bare.py: hashes and dicts, no auth, no storage (calibration)."""
    home = workdir / "bare"
    home.mkdir(parents=True)
    port = free_port()
    argv = [sys.executable, str(BENCH / "bare.py"), f"127.0.0.1:{port}"]
    return Running(argv, ROOT, dict(os.environ), f"127.0.0.1:{port}", home / "bare.log", ())


# linux/fs.h: FS_IOC_GETFLAGS, FS_IOC_SETFLAGS (a long's size, on 64-bit) and FS_TOPDIR_FL.
_FS_IOC_GETFLAGS = 0x80086601
_FS_IOC_SETFLAGS = 0x40086602
_FS_TOPDIR_FL = 0x00020000


def workdir() -> Path:
    """A throw-away directory for one run, marked as the top of a directory hierarchy (`apart`)."""
    path = Path(tempfile.mkdtemp(prefix="reapi-bench-"))
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        (flags,) = struct.unpack("l", fcntl.ioctl(fd, _FS_IOC_GETFLAGS, struct.pack("l", 0)))
        fcntl.ioctl(fd, _FS_IOC_SETFLAGS, struct.pack("l", flags | _FS_TOPDIR_FL))
    except OSError:
        pass  # not ext4 (or no flags there): nothing to spread
    finally:
        os.close(fd)
    return path


def apart(workdir: Path, name: str) -> Path:
    """`workdir`/`name`-<this run>: a directory that ext4 places in a block group of its own.

    Each server's storage and each Bazel output base lives in one, as on machines of their
    own. ext4 keeps a directory's files in or near its parent's block group, and on a
    filesystem without a journal (this machine's: `/proc/fs/jbd2` is empty) a new file skips
    every inode of that group freed in the last 60-360 s, reading the inode table to tell
    (`recently_deleted` in the kernel's ext4/ialloc.c). Sharing /tmp's group, a server paid for
    Bazel's sandbox directories coming and going: in a cold build of 1,000 actions that scan
    was about a quarter of our server's CPU (perf: ~24 % of its samples), and a run begun
    right after another paid for the files the last one removed (FirstPass 0.1-0.2, not ~0.7).
    Under a directory marked FS_TOPDIR_FL (`workdir`) ext4 spreads subdirectories over groups,
    choosing by a hash of the name: hence a name no earlier run used.
    """
    return workdir / f"{name}-{workdir.name.removeprefix('reapi-bench-')}"
