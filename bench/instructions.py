"""Instructions per call of our server, counted by valgrind's callgrind: a figure that does not
move with the machine's load the way wall-clock throughput does (±20 % between runs here).

    .venv/bin/python bench/instructions.py [--workloads gar,read,batchread,findmissing,...]
        [--observability on,off,metrics,log] [--calls 1000] [--server-tree PATH] [--bare] [--keep DIR]

For each workload: `reapi serve --processes 1` (its own data directory, tenant and PAT, as
bench/run.py) under `valgrind --tool=callgrind --instr-atstart=no`; up to 200 warm-up calls
(no more than are measured) from one client thread, then instrumentation on
(`callgrind_control -i on`) for `--calls` calls, off again; the server process's user-space
instructions (every thread) divided by the calls.

`--server-tree PATH` serves the code of another checkout (e.g. a `git worktree` of an older
commit: its manage.py, migrations and reapi/), with this checkout's client, so two revisions
are compared call for call. `--bare` counts bench/bare.py instead (no auth, no storage).

Work done once per interval of wall-clock time (readiness every REAPI_READINESS_SECONDS, the
credential check against the database every REAPI_CREDENTIAL_TTL_SECONDS, the metrics fold, the
request log's batched writes) runs at its usual rate while valgrind slows the serving ~50-fold,
so its share of a call is inflated 50-fold, and moves with the machine's load: readiness and the
credential TTL are set to an hour here (at full speed a 2 s TTL is one query per ~4,000 calls),
and the rest is left in (a real cost of `on`, overstated). Not part of `make test`; needs valgrind (Debian's package).
"""

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(1, str(BENCH))

import servers  # noqa: E402

from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2  # noqa: E402
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc  # noqa: E402
from reapi.gen.google.bytestream import bytestream_pb2 as bs_pb2  # noqa: E402
from reapi.gen.google.bytestream import bytestream_pb2_grpc as bs_grpc  # noqa: E402
from tests.support.servers import free_port, stop_process  # noqa: E402

WORKLOADS = (
    "gar",
    "read",
    "batchread",
    "findmissing",
    "findmissing10k",
    "batchupdate",
    "write64m",
    "read64m",
    "gar_miss",
    "findmissing_small",
    "batchupdate_small",
    "write_small",
    "uar",
    "cold",
)
WARM_UP = 200


def digest(data: bytes) -> re_pb2.Digest:
    return re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


def calls(
    channel: grpc.Channel, md: tuple[tuple[str, str], ...], n: int = 0
) -> dict[str, Callable[[], None]]:
    """One call of each workload, against blobs and an action result stored here first: a
    GetActionResult of 4 outputs and stdout (bench/run.py's), a ByteStream Read of a 2 KiB blob,
    BatchReadBlobs of 100 such blobs, FindMissingBlobs of 50 present and the same 50 absent,
    FindMissingBlobs of 10,000 (bench/run.py's: 5,000 present, 5,000 never seen),
    BatchUpdateBlobs of 100 fresh 2 KiB blobs, and bench/run.py's ByteStream: a fresh 64 MiB
    blob written in 1 MiB chunks, and one read (use a small --calls for these two).

    And a cold build's calls per action, as Bazel 4.2.3 makes them (`n` is how many calls will
    be made, warm-up included, so the `uar` workload's outputs are all uploaded beforehand):
    a GetActionResult of an unknown action (`gar_miss`), FindMissingBlobs of 2 fresh outputs,
    stdout and 1 present blob (`findmissing_small`), a ByteStream Write of one fresh ~1 KiB blob
    in one message (`write_small`: Bazel 4.2.3 uploads every blob so, up to its 16 KiB chunks,
    never by BatchUpdateBlobs), UpdateActionResult of a fresh action naming 2 output files and
    stdout uploaded before the count (`uar`), and a cold action in a row (`cold`: the
    GetActionResult, the FindMissingBlobs, a Write of each of its 3 blobs, the
    UpdateActionResult); each with a RequestMetadata header as Bazel sends (one invocation id,
    an action id per action). BatchUpdateBlobs of 3 such blobs stays as `batchupdate_small`."""
    cas = re_grpc.ContentAddressableStorageStub(channel)
    ac = re_grpc.ActionCacheStub(channel)
    bs = bs_grpc.ByteStreamStub(channel)
    outputs = [os.urandom(64 * 1024), os.urandom(16 * 1024), os.urandom(200 * 1024), os.urandom(900)]
    stdout = b"INFO: compiled 3 files\n" * 20
    small = [os.urandom(2048) for _ in range(100)]
    cas.BatchUpdateBlobs(
        re_pb2.BatchUpdateBlobsRequest(
            requests=[
                re_pb2.BatchUpdateBlobsRequest.Request(digest=digest(b), data=b)
                for b in [*outputs, stdout, *small]
            ]
        ),
        metadata=md,
        timeout=60,
    )
    action = digest(os.urandom(100))
    result = re_pb2.ActionResult(
        output_files=[re_pb2.OutputFile(path=f"out/f{i}", digest=digest(b)) for i, b in enumerate(outputs)],
        stdout_digest=digest(stdout),
    )
    ac.UpdateActionResult(
        re_pb2.UpdateActionResultRequest(action_digest=action, action_result=result), metadata=md, timeout=60
    )
    present = [digest(b) for b in small]
    find = re_pb2.FindMissingBlobsRequest(
        blob_digests=[digest(os.urandom(8)) for _ in range(50)] + present[:50]
    )
    one = present[0]

    def read() -> None:
        name = f"blobs/{one.hash}/{one.size_bytes}"
        for _ in bs.Read(bs_pb2.ReadRequest(resource_name=name), metadata=md, timeout=60):
            pass

    def batch_update() -> None:
        fresh = [os.urandom(2048) for _ in range(100)]
        cas.BatchUpdateBlobs(
            re_pb2.BatchUpdateBlobsRequest(
                requests=[re_pb2.BatchUpdateBlobsRequest.Request(digest=digest(b), data=b) for b in fresh]
            ),
            metadata=md,
            timeout=60,
        )

    # bench/run.py's ByteStream: a 64 MiB blob written in 1 MiB chunks (a fresh one each call),
    # and one read back (written by the first, warm-up, call).
    big: list[bytes] = []

    def write_big() -> re_pb2.Digest:
        if not big:
            big.append(os.urandom(64 * 1024 * 1024))
        data = os.urandom(16) + big[0][16:]  # fresh, so the server stores it again
        d = digest(data)
        name = f"uploads/{uuid.uuid4()}/blobs/{d.hash}/{d.size_bytes}"
        chunk = 1024 * 1024
        requests = (
            bs_pb2.WriteRequest(
                resource_name=name if i == 0 else "",
                write_offset=i,
                data=data[i : i + chunk],
                finish_write=i + chunk >= len(data),
            )
            for i in range(0, len(data), chunk)
        )
        bs.Write(requests, metadata=md, timeout=600)
        return d

    written: list[re_pb2.Digest] = []

    def read_big() -> None:
        if not written:
            written.append(write_big())
        name = f"blobs/{written[0].hash}/{written[0].size_bytes}"
        for _ in bs.Read(bs_pb2.ReadRequest(resource_name=name), metadata=md, timeout=600):
            pass

    # bench/run.py's FindMissingBlobs: 10,000 digests, 5,000 present and 5,000 never seen.
    present_10k = []
    for _ in range(10):
        blobs = [os.urandom(1024) for _ in range(500)]
        present_10k += [digest(b) for b in blobs]
        cas.BatchUpdateBlobs(
            re_pb2.BatchUpdateBlobsRequest(
                requests=[re_pb2.BatchUpdateBlobsRequest.Request(digest=digest(b), data=b) for b in blobs]
            ),
            metadata=md,
            timeout=60,
        )

    def find_10k() -> None:
        fresh = [digest(os.urandom(16)) for _ in range(5000)]
        request = re_pb2.FindMissingBlobsRequest(blob_digests=present_10k + fresh)
        cas.FindMissingBlobs(request, metadata=md, timeout=60)

    # Bazel 4.2.3 sends its RequestMetadata on every call: one invocation, a fresh action id.
    invocation = str(uuid.uuid4())

    def bazel(action_id: str = "") -> tuple[tuple[str, str | bytes], ...]:
        meta = re_pb2.RequestMetadata(
            tool_details=re_pb2.ToolDetails(tool_name="bazel", tool_version="4.2.3"),
            action_id=action_id or os.urandom(32).hex(),
            tool_invocation_id=invocation,
            correlated_invocations_id=invocation,
        )
        return (*md, ("build.bazel.remote.execution.v2.requestmetadata-bin", meta.SerializeToString()))

    def fresh_action() -> tuple[list[bytes], re_pb2.ActionResult]:
        blobs = [os.urandom(1024), os.urandom(900), b"INFO: " + os.urandom(40).hex().encode() + b"\n"]
        result = re_pb2.ActionResult(
            output_files=[
                re_pb2.OutputFile(path=f"bazel-out/k8-fastbuild/bin/g{i}.out", digest=digest(b))
                for i, b in enumerate(blobs[:2])
            ],
            stdout_digest=digest(blobs[2]),
        )
        return blobs, result

    def upload(blobs: list[bytes], action_id: str = "") -> None:
        cas.BatchUpdateBlobs(
            re_pb2.BatchUpdateBlobsRequest(
                requests=[re_pb2.BatchUpdateBlobsRequest.Request(digest=digest(b), data=b) for b in blobs]
            ),
            metadata=bazel(action_id),
            timeout=60,
        )

    def write_one(data: bytes, action_id: str = "") -> None:
        d = digest(data)
        name = f"uploads/{uuid.uuid4()}/blobs/{d.hash}/{d.size_bytes}"
        request = bs_pb2.WriteRequest(resource_name=name, write_offset=0, data=data, finish_write=True)
        bs.Write(iter((request,)), metadata=bazel(action_id), timeout=60)

    def update_result(result: re_pb2.ActionResult, action_id: str = "") -> None:
        ac.UpdateActionResult(
            re_pb2.UpdateActionResultRequest(action_digest=digest(os.urandom(100)), action_result=result),
            metadata=bazel(action_id),
            timeout=60,
        )

    # `uar`: every action's outputs uploaded now, 100 blobs a call, outside the count.
    uploaded: list[re_pb2.ActionResult] = []
    pending: list[bytes] = []
    for i in range(n if n else 0):
        blobs, result = fresh_action()
        uploaded.append(result)
        pending += blobs
        if len(pending) >= 99 or i == n - 1:
            upload(pending)
            pending = []

    def gar_miss(action_id: str = "") -> None:
        try:
            ac.GetActionResult(
                re_pb2.GetActionResultRequest(action_digest=digest(os.urandom(100))),
                metadata=bazel(action_id),
                timeout=60,
            )
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                raise

    def find_small() -> None:
        digests = [digest(os.urandom(1024)), digest(os.urandom(900)), digest(os.urandom(50)), one]
        cas.FindMissingBlobs(
            re_pb2.FindMissingBlobsRequest(blob_digests=digests), metadata=bazel(), timeout=60
        )

    def cold() -> None:
        blobs, result = fresh_action()
        action_id = os.urandom(32).hex()
        gar_miss(action_id)
        cas.FindMissingBlobs(
            re_pb2.FindMissingBlobsRequest(blob_digests=[digest(b) for b in blobs]),
            metadata=bazel(action_id),
            timeout=60,
        )
        for blob in blobs:
            write_one(blob, action_id)
        update_result(result, action_id)

    return {
        "gar_miss": gar_miss,
        "findmissing_small": find_small,
        "batchupdate_small": lambda: upload(fresh_action()[0]),
        "write_small": lambda: write_one(os.urandom(1024)),
        "uar": lambda: update_result(uploaded.pop()),
        "cold": cold,
        "findmissing10k": find_10k,
        "gar": lambda: ac.GetActionResult(
            re_pb2.GetActionResultRequest(action_digest=action), metadata=md, timeout=60
        ),
        "read": read,
        "batchread": lambda: cas.BatchReadBlobs(
            re_pb2.BatchReadBlobsRequest(digests=present), metadata=md, timeout=60
        ),
        "findmissing": lambda: cas.FindMissingBlobs(find, metadata=md, timeout=60),
        "batchupdate": batch_update,
        "write64m": write_big,
        "read64m": read_big,
    }


def measure(workload: str, mode: str, n: int, tree: Path, bare: bool, keep: Path | None = None) -> float:
    """Thousands of instructions per call. `mode`: on (metrics and the request log), off (neither),
    metrics or log (one of the two alone, to see which costs what)."""
    work = Path(tempfile.mkdtemp(prefix="reapi-instructions-"))
    try:
        port = free_port()
        if bare:
            argv = [sys.executable, str(tree / "bench" / "bare.py"), f"127.0.0.1:{port}"]
            md: tuple[tuple[str, str], ...] = ()
            env = dict(os.environ)
        else:
            servers.ROOT = tree  # the server's manage.py and migrations
            ours = servers.Ours(work)
            ours.prepare()
            argv = [sys.executable, str(tree / "manage.py"), "reapi", "serve", "--cluster", "external"]
            argv += ["--listen", f"127.0.0.1:{port}", "--processes", "1"]
            if mode in ("on", "metrics"):
                argv += ["--metrics-listen", f"127.0.0.1:{free_port()}"]
            md = ours.metadata
            env = {
                **ours.env,
                "REAPI_REQUEST_LOG": "all" if mode in ("on", "log") else "errors",
                "REAPI_READINESS_SECONDS": "3600",
                "REAPI_CREDENTIAL_TTL_SECONDS": "3600",
            }
        out = work / "callgrind.out"
        valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}.%p"]
        with open(work / "server.log", "wb") as log:
            proc = subprocess.Popen(valgrind + argv, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            _wait(channel, md, proc, work / "server.log")
            call = calls(channel, md, min(WARM_UP, n) + n if workload == "uar" else 0)[workload]
            for _ in range(min(WARM_UP, n)):  # a call of 10,000 digests warms up as much as 200 small ones
                call()
            _control("-i", "on", proc.pid)
            for _ in range(n):
                call()
            _control("-i", "off", proc.pid)
            _control("-d", "", proc.pid)
        finally:
            stop_process(proc, timeout=120)
        total = sum(
            int(m.group(1))
            for f in work.glob("callgrind.out.*")
            for m in re.finditer(r"^totals: (\d+)", f.read_text(errors="replace"), re.M)
        )
        if keep is not None:  # for callgrind_annotate: which functions the instructions went to
            keep.mkdir(parents=True, exist_ok=True)
            for f in work.glob("callgrind.out.*"):
                shutil.copy(f, keep / f"{workload}-{mode}-{f.name}")
        return total / n / 1000
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _control(option: str, value: str, pid: int) -> None:
    subprocess.run(
        ["callgrind_control", option, *([value] if value else []), str(pid)], check=True, capture_output=True
    )


def _wait(
    channel: grpc.Channel, md: tuple[tuple[str, str], ...], proc: subprocess.Popen[bytes], log: Path
) -> None:
    deadline = time.monotonic() + 300  # Django's start-up under valgrind takes a while
    while True:
        try:
            re_grpc.CapabilitiesStub(channel).GetCapabilities(
                re_pb2.GetCapabilitiesRequest(), metadata=md, timeout=5
            )
            return
        except grpc.RpcError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the server did not start under valgrind:\n{log.read_text()[-3000:]}"
                ) from None
            time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument(
        "--observability", default="off", help="of on, off, metrics and log: e.g. on,off (default off)"
    )
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--server-tree", type=Path, default=servers.ROOT)
    parser.add_argument("--bare", action="store_true", help="count bench/bare.py instead of ours")
    parser.add_argument("--keep", type=Path, help="copy callgrind's output files into this directory")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed: apt-get install valgrind")
    workloads = args.workloads.split(",")
    unknown = set(workloads) - set(WORKLOADS)
    if unknown:
        sys.exit(f"unknown workloads {sorted(unknown)}; known: {', '.join(WORKLOADS)}")
    tree = args.server_tree.resolve()
    for workload in workloads:
        for mode in args.observability.split(","):
            k = measure(workload, mode, args.calls, tree, args.bare, args.keep)
            who = "bare" if args.bare else f"{tree.name} observability {mode}"
            print(f"{workload:12} {k:9.1f} k instructions/call  ({who})", flush=True)


if __name__ == "__main__":
    main()
