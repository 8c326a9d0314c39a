"""The bench workloads: real REAPI calls through the generated stubs, from client threads.

Each workload runs a bounded number of rounds and returns every sample, so the report can
show the median and the spread. Inputs are made before the clock starts; outputs are checked
after it stops, so the client measures the server and not its own hashing.
"""

import hashlib
import os
import random
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc

from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from reapi.gen.google.bytestream import bytestream_pb2 as bs_pb2
from reapi.gen.google.bytestream import bytestream_pb2_grpc as bs_grpc
from tests.support.reapi_client import digest

MIB = 1024 * 1024
BIG_BLOB = 64 * MIB
WRITE_CHUNK = 1 * MIB
SMALL_BLOBS = 2000
BATCH = 100
CLIENT_THREADS = 8
FIND_MISSING_DIGESTS = 10_000
CALL_TIMEOUT = 60.0


@dataclass(frozen=True)
class Target:
    """Where the workloads go: a loopback address, the credential metadata, an instance."""

    address: str
    metadata: tuple[tuple[str, str], ...] = ()
    instance: str = ""

    def channel(self) -> grpc.Channel:
        # A channel of its own per client thread, with its own connection (no shared
        # subchannel), so that several server processes behind SO_REUSEPORT all get work.
        return grpc.insecure_channel(
            self.address,
            options=[
                ("grpc.max_receive_message_length", 64 * MIB),
                ("grpc.max_send_message_length", 64 * MIB),
                ("grpc.use_local_subchannel_pool", 1),
            ],
        )


@dataclass
class Result:
    name: str
    unit: str
    higher_is_better: bool
    samples: list[float] = field(default_factory=list)
    detail: str = ""

    @property
    def value(self) -> float:
        return statistics.median(self.samples)


def small_blobs(count: int, rng: random.Random) -> list[bytes]:
    """`count` distinct blobs of 1-4 KiB (random bytes: no two share a digest)."""
    return [os.urandom(rng.randint(1024, 4096)) for _ in range(count)]


def _in_threads(jobs: Sequence[Callable[[grpc.Channel], None]], channels: list[grpc.Channel]) -> float:
    """Run jobs on CLIENT_THREADS threads, job i on channel i % threads; return wall seconds."""
    lanes: list[list[Callable[[grpc.Channel], None]]] = [[] for _ in range(CLIENT_THREADS)]
    for i, job in enumerate(jobs):
        lanes[i % CLIENT_THREADS].append(job)
    start_line = threading.Barrier(CLIENT_THREADS + 1)

    def lane(i: int) -> None:
        start_line.wait()
        for job in lanes[i]:
            job(channels[i])

    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        running = [pool.submit(lane, i) for i in range(CLIENT_THREADS)]
        start_line.wait()
        t0 = time.perf_counter()
        for f in running:
            f.result()
        return time.perf_counter() - t0


class Bench:
    """The workloads against one target, sharing the blobs they upload."""

    def __init__(self, target: Target, rounds: int, seed: int = 1) -> None:
        self.target = target
        self.rounds = rounds
        self.rng = random.Random(seed)
        self.channels = [target.channel() for _ in range(CLIENT_THREADS)]
        for ch in self.channels:
            grpc.channel_ready_future(ch).result(timeout=30)
        self.uploaded: list[bytes] = []

    def close(self) -> None:
        for ch in self.channels:
            ch.close()

    @property
    def md(self) -> tuple[tuple[str, str], ...]:
        return self.target.metadata

    def _prefix(self) -> str:
        return f"{self.target.instance}/" if self.target.instance else ""

    # --- ByteStream -------------------------------------------------------------------------

    def bytestream(self) -> list[Result]:
        write = Result("ByteStream Write 64 MiB", "MB/s", True)
        read = Result("ByteStream Read 64 MiB", "MB/s", True)
        stub = bs_grpc.ByteStreamStub(self.channels[0])
        written: list[re_pb2.Digest] = []
        for _ in range(self.rounds):
            data = os.urandom(BIG_BLOB)
            d = digest(data)
            chunks = [data[o : o + WRITE_CHUNK] for o in range(0, len(data), WRITE_CHUNK)]
            name = f"{self._prefix()}uploads/{uuid.uuid4()}/blobs/{d.hash}/{d.size_bytes}"

            def requests(chunks: list[bytes] = chunks, name: str = name) -> Iterator[bs_pb2.WriteRequest]:
                offset = 0
                for i, chunk in enumerate(chunks):
                    yield bs_pb2.WriteRequest(
                        resource_name=name if i == 0 else "",
                        write_offset=offset,
                        data=chunk,
                        finish_write=i == len(chunks) - 1,
                    )
                    offset += len(chunk)

            t0 = time.perf_counter()
            reply = stub.Write(requests(), metadata=self.md, timeout=CALL_TIMEOUT)
            elapsed = time.perf_counter() - t0
            if reply.committed_size != BIG_BLOB:
                raise RuntimeError(f"Write committed {reply.committed_size} of {BIG_BLOB} bytes")
            write.samples.append(BIG_BLOB / elapsed / 1e6)
            written.append(d)
            del data, chunks
        for d in written:
            t0 = time.perf_counter()
            parts = [
                r.data
                for r in stub.Read(
                    bs_pb2.ReadRequest(resource_name=f"{self._prefix()}blobs/{d.hash}/{d.size_bytes}"),
                    metadata=self.md,
                    timeout=CALL_TIMEOUT,
                )
            ]
            elapsed = time.perf_counter() - t0
            got = b"".join(parts)
            if len(got) != d.size_bytes or hashlib.sha256(got).hexdigest() != d.hash:
                raise RuntimeError("ByteStream Read returned other bytes than were written")
            read.samples.append(BIG_BLOB / elapsed / 1e6)
            read.detail = f"{len(parts)} messages"
        write.detail = f"{WRITE_CHUNK // MIB} MiB chunks"
        return [write, read]

    # --- first pass -------------------------------------------------------------------------

    def first_pass(self) -> list[Result]:
        """BatchUpdateBlobs on a server that has served nothing yet, with no warm-up: one
        channel (one connection) shared by the client threads, the first 2,000 blobs against
        the same client's later rounds. What a fresh server or tenant pays once (directories,
        connections, thread pools) shows up as a first pass slower than the warm figure."""
        channel = self.target.channel()
        try:
            grpc.channel_ready_future(channel).result(timeout=30)
            lanes = [channel] * CLIENT_THREADS
            first = Result("First pass: BatchUpdateBlobs, 1 channel", "blobs/s", True)
            first.samples.append(SMALL_BLOBS / self._batch_update(small_blobs(SMALL_BLOBS, self.rng), lanes))
            warm = Result("Warm: BatchUpdateBlobs, 1 channel", "blobs/s", True)
            for _ in range(self.rounds):
                warm.samples.append(
                    SMALL_BLOBS / self._batch_update(small_blobs(SMALL_BLOBS, self.rng), lanes)
                )
        finally:
            channel.close()
        ratio = Result("First pass / warm", "x", True, [first.value / warm.value])
        ratio.detail = f"{first.value:,.0f} against {warm.value:,.0f} blobs/s"
        return [first, warm, ratio]

    # --- batches ----------------------------------------------------------------------------

    def _batch_update(self, blobs: list[bytes], channels: list[grpc.Channel] | None = None) -> float:
        requests = [
            re_pb2.BatchUpdateBlobsRequest(
                instance_name=self.target.instance,
                requests=[
                    re_pb2.BatchUpdateBlobsRequest.Request(digest=digest(b), data=b)
                    for b in blobs[i : i + BATCH]
                ],
            )
            for i in range(0, len(blobs), BATCH)
        ]
        failures: list[str] = []

        def job(request: re_pb2.BatchUpdateBlobsRequest) -> Callable[[grpc.Channel], None]:
            def run(ch: grpc.Channel) -> None:
                reply = re_grpc.ContentAddressableStorageStub(ch).BatchUpdateBlobs(
                    request, metadata=self.md, timeout=CALL_TIMEOUT
                )
                failures.extend(r.status.message for r in reply.responses if r.status.code != 0)

            return run

        elapsed = _in_threads([job(r) for r in requests], channels or self.channels)
        if failures:
            raise RuntimeError(f"BatchUpdateBlobs refused {len(failures)} blobs: {failures[0]}")
        return elapsed

    def batch_update(self) -> Result:
        result = Result(f"BatchUpdateBlobs {SMALL_BLOBS}x1-4 KiB, {CLIENT_THREADS} threads", "blobs/s", True)
        self._batch_update(small_blobs(SMALL_BLOBS, self.rng))  # warm-up, not counted
        for _ in range(self.rounds):
            blobs = small_blobs(SMALL_BLOBS, self.rng)
            result.samples.append(SMALL_BLOBS / self._batch_update(blobs))
            self.uploaded.extend(blobs)
        return result

    def _batch_read(self, blobs: list[bytes]) -> float:
        expected = {digest(b).hash: b for b in blobs}
        requests = [
            re_pb2.BatchReadBlobsRequest(
                instance_name=self.target.instance,
                digests=[digest(b) for b in blobs[i : i + BATCH]],
            )
            for i in range(0, len(blobs), BATCH)
        ]
        replies: list[re_pb2.BatchReadBlobsResponse] = []

        def job(request: re_pb2.BatchReadBlobsRequest) -> Callable[[grpc.Channel], None]:
            def run(ch: grpc.Channel) -> None:
                stub = re_grpc.ContentAddressableStorageStub(ch)
                replies.append(stub.BatchReadBlobs(request, metadata=self.md, timeout=CALL_TIMEOUT))

            return run

        elapsed = _in_threads([job(q) for q in requests], self.channels)
        got = {x.digest.hash: x.data for reply in replies for x in reply.responses if x.status.code == 0}
        if got != expected:
            raise RuntimeError(f"BatchReadBlobs returned {len(got)} of {len(expected)} blobs intact")
        return elapsed

    def batch_read(self) -> Result:
        result = Result(f"BatchReadBlobs {SMALL_BLOBS}x1-4 KiB, {CLIENT_THREADS} threads", "blobs/s", True)
        for r in range(self.rounds + 1):
            blobs = self.uploaded[(r % self.rounds) * SMALL_BLOBS :][:SMALL_BLOBS]
            elapsed = self._batch_read(blobs)
            if r > 0:  # the first round warms up
                result.samples.append(SMALL_BLOBS / elapsed)
        return result

    # --- FindMissingBlobs -------------------------------------------------------------------

    def find_missing(self) -> Result:
        half = FIND_MISSING_DIGESTS // 2
        result = Result(f"FindMissingBlobs {FIND_MISSING_DIGESTS} digests, half present", "ms", False)
        if len(self.uploaded) < half:
            extra = small_blobs(half - len(self.uploaded), self.rng)
            self._batch_update(extra)
            self.uploaded.extend(extra)
        present = [digest(b) for b in self.uploaded[:half]]
        stub = re_grpc.ContentAddressableStorageStub(self.channels[0])
        for r in range(2 * self.rounds + 1):
            # Fresh absent digests every time: a server may not answer from memory what it
            # has never seen.
            absent = [
                re_pb2.Digest(hash=os.urandom(32).hex(), size_bytes=self.rng.randint(1024, 4096))
                for _ in range(half)
            ]
            wanted = present + absent
            self.rng.shuffle(wanted)
            request = re_pb2.FindMissingBlobsRequest(instance_name=self.target.instance, blob_digests=wanted)
            t0 = time.perf_counter()
            reply = stub.FindMissingBlobs(request, metadata=self.md, timeout=CALL_TIMEOUT)
            elapsed = time.perf_counter() - t0
            missing = {d.hash for d in reply.missing_blob_digests}
            if missing != {d.hash for d in absent}:
                raise RuntimeError(f"FindMissingBlobs reported {len(missing)} missing, expected {half}")
            if r > 0:
                result.samples.append(elapsed * 1000)
        return result

    # --- GetActionResult --------------------------------------------------------------------

    def get_action_result(self, calls_per_thread: int, max_seconds: float) -> Result:
        result = Result(f"GetActionResult, {CLIENT_THREADS} threads", "calls/s", True)
        outputs = {
            "bazel-out/k8-fastbuild/bin/lib/liblib.a": os.urandom(64 * 1024),
            "bazel-out/k8-fastbuild/bin/lib/lib.o": os.urandom(16 * 1024),
            "bazel-out/k8-fastbuild/bin/app/app": os.urandom(200 * 1024),
            "bazel-out/k8-fastbuild/bin/app/app.runfiles_manifest": os.urandom(900),
        }
        stdout = b"INFO: compiled 3 files\n" * 20
        cas = re_grpc.ContentAddressableStorageStub(self.channels[0])
        blobs = [*outputs.values(), stdout]
        reply = cas.BatchUpdateBlobs(
            re_pb2.BatchUpdateBlobsRequest(
                instance_name=self.target.instance,
                requests=[re_pb2.BatchUpdateBlobsRequest.Request(digest=digest(b), data=b) for b in blobs],
            ),
            metadata=self.md,
            timeout=CALL_TIMEOUT,
        )
        if any(r.status.code != 0 for r in reply.responses):
            raise RuntimeError("could not upload the action result's outputs")
        action = re_pb2.Action(
            command_digest=digest(os.urandom(200)), input_root_digest=digest(os.urandom(300))
        )
        action_digest = digest(action.SerializeToString())
        action_result = re_pb2.ActionResult(
            output_files=[
                re_pb2.OutputFile(path=path, digest=digest(data), is_executable=path.endswith("/app"))
                for path, data in outputs.items()
            ],
            exit_code=0,
            stdout_digest=digest(stdout),
            execution_metadata=re_pb2.ExecutedActionMetadata(worker="bench"),
        )
        re_grpc.ActionCacheStub(self.channels[0]).UpdateActionResult(
            re_pb2.UpdateActionResultRequest(
                instance_name=self.target.instance, action_digest=action_digest, action_result=action_result
            ),
            metadata=self.md,
            timeout=CALL_TIMEOUT,
        )
        request = re_pb2.GetActionResultRequest(
            instance_name=self.target.instance, action_digest=action_digest
        )
        for r in range(self.rounds + 1):
            rate = self._get_action_results(request, len(outputs), calls_per_thread, max_seconds)
            if r > 0:
                result.samples.append(rate)
        result.detail = f"{len(outputs)} output files + stdout"
        return result

    def _get_action_results(
        self, request: re_pb2.GetActionResultRequest, files: int, calls: int, max_seconds: float
    ) -> float:
        """`calls` GetActionResult per thread (fewer past `max_seconds`); calls a second."""
        deadline = time.perf_counter() + max_seconds
        counts = [0] * CLIENT_THREADS

        def job(i: int) -> Callable[[grpc.Channel], None]:
            def run(ch: grpc.Channel) -> None:
                stub = re_grpc.ActionCacheStub(ch)
                for _ in range(calls):
                    got = stub.GetActionResult(request, metadata=self.md, timeout=CALL_TIMEOUT)
                    if len(got.output_files) != files:
                        raise RuntimeError("GetActionResult returned another result")
                    counts[i] += 1
                    if time.perf_counter() > deadline:
                        return

            return run

        elapsed = _in_threads([job(i) for i in range(CLIENT_THREADS)], self.channels)
        return sum(counts) / elapsed


WORKLOADS = (
    "FirstPass",
    "ByteStream",
    "BatchUpdateBlobs",
    "BatchReadBlobs",
    "FindMissingBlobs",
    "GetActionResult",
)


def run_all(
    target: Target, quick: bool, log: Callable[[str], None], only: Sequence[str] = WORKLOADS
) -> list[Result]:
    rounds = 2 if quick else 5
    bench = Bench(target, rounds)
    try:
        results: list[Result] = []
        steps: list[tuple[str, Callable[[], list[Result]]]] = [
            # First, while the server has served nothing.
            ("FirstPass", bench.first_pass),
            ("ByteStream", bench.bytestream),
            ("BatchUpdateBlobs", lambda: [bench.batch_update()]),
            ("BatchReadBlobs", lambda: [bench.batch_read()]),
            ("FindMissingBlobs", lambda: [bench.find_missing()]),
            (
                "GetActionResult",
                lambda: [bench.get_action_result(250 if quick else 1000, 2.0 if quick else 3.0)],
            ),
        ]
        for label, step in steps:
            if label not in only:
                continue
            t0 = time.perf_counter()
            got = step()
            log(
                f"  {label}: "
                + ", ".join(f"{r.value:,.1f} {r.unit}" for r in got)
                + f" ({time.perf_counter() - t0:.1f}s)"
            )
            results.extend(got)
        return results
    finally:
        bench.close()
