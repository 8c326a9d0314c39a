"""Real server processes for the tests, started and always stopped by fixtures."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]


def stop_process(proc: "subprocess.Popen[bytes] | None", timeout: float = 15) -> None:
    """Terminate a child, and kill it if it does not go within `timeout` seconds."""
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def manage(
    *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=check,
        timeout=120,
    )


class ReapiServer:
    """`manage.py reapi serve` in a child process on a free loopback port."""

    def __init__(
        self,
        cluster: str,
        env: dict[str, str] | None = None,
        processes: int = 1,
        threads: int | None = None,
    ) -> None:
        self.cluster = cluster
        self.threads = threads
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, **(env or {})}
        self.processes = processes
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = Path(os.environ["DATA_DIR"]) / f"reapi-{cluster}-{self.port}.log"

    @property
    def tls(self) -> bool:
        return bool(self.env.get("REAPI_TLS_CERT"))

    @property
    def url(self) -> str:
        return f"{'grpcs' if self.tls else 'grpc'}://{self.address}"

    def __enter__(self) -> "ReapiServer":
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    str(ROOT / "manage.py"),
                    "reapi",
                    "serve",
                    "--cluster",
                    self.cluster,
                    "--listen",
                    self.address,
                    "--processes",
                    str(self.processes),
                    *(("--threads", str(self.threads)) if self.threads else ()),
                ],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self._wait_healthy()
        return self

    def channel(self) -> grpc.Channel:
        if self.tls:
            with open(self.env["REAPI_TLS_CERT"], "rb") as f:
                creds = grpc.ssl_channel_credentials(root_certificates=f.read())
            return grpc.secure_channel(self.address, creds)
        return grpc.insecure_channel(
            self.address, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        )

    def _wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        assert self.proc is not None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"reapi server exited early:\n{self.log.read_text()}")
            try:
                with self.channel() as ch:
                    reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"reapi server not healthy after {timeout}s:\n{self.log.read_text()}")

    def stop(self) -> None:
        stop_process(self.proc)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
