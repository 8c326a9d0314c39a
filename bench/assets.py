"""Remote Asset API bench: a cached 64 MiB asset against a plain 64 MiB blob, and the latency of
FetchBlob for a cached asset.

    .venv/bin/python bench/assets.py [--quick] [--keep]

Starts one `manage.py reapi serve` process (external cluster, auth on) in a throw-away data
directory and an HTTP origin on 127.0.0.1 holding a 64 MiB file, which REAPI_ASSET_ALLOWED_URLS
names. The first FetchBlob downloads it (timed, for information); then the origin is stopped
and everything after comes from the cache:

  FetchBlob, cached      one client thread, sequential calls; p50 and p95 (target p50 <= 5 ms)
  asset served           FetchBlob + ByteStream Read of the whole asset, as Bazel's remote
                         downloader does, in MB/s
  plain blob read        ByteStream Read of a 64 MiB blob written with ByteStream Write
                         (bench/run.py's workload), in MB/s, rounds interleaved with the above

Target: the asset is served at ByteStream read speed, i.e. at least 85% of the plain read of the
same run (the medians; this machine's figures move by +-30% with its load, both alike).
Results go to bench/results/assets-<time>.json as well. Exits 1 when a target is missed.
"""

import argparse
import base64
import hashlib
import json
import os
import shutil
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(1, str(BENCH))

import grpc  # noqa: E402
import servers  # noqa: E402
import text_table  # noqa: E402

from reapi.gen.build.bazel.remote.asset.v1 import remote_asset_pb2 as ra_pb2  # noqa: E402
from reapi.gen.build.bazel.remote.asset.v1 import remote_asset_pb2_grpc as ra_grpc  # noqa: E402
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2  # noqa: E402
from reapi.gen.google.bytestream import bytestream_pb2 as bs_pb2  # noqa: E402
from reapi.gen.google.bytestream import bytestream_pb2_grpc as bs_grpc  # noqa: E402
from tests.support.asset_origin import Origin  # noqa: E402

MIB = 1024 * 1024
SIZE = 64 * MIB
FETCH_P50_TARGET_MS = 5.0
SERVED_RATIO_TARGET = 0.85
CALL_TIMEOUT = 120


def log(line: str) -> None:
    print(line, flush=True)


def read(stub: bs_grpc.ByteStreamStub, md: tuple[tuple[str, str], ...], d: re_pb2.Digest) -> bytes:
    parts = [
        r.data
        for r in stub.Read(
            bs_pb2.ReadRequest(resource_name=f"blobs/{d.hash}/{d.size_bytes}"),
            metadata=md,
            timeout=CALL_TIMEOUT,
        )
    ]
    return b"".join(parts)


def write(stub: bs_grpc.ByteStreamStub, md: tuple[tuple[str, str], ...], data: bytes) -> re_pb2.Digest:
    d = re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))
    name = f"uploads/{uuid.uuid4()}/blobs/{d.hash}/{d.size_bytes}"

    def requests() -> Iterator[bs_pb2.WriteRequest]:
        for offset in range(0, len(data), MIB):
            yield bs_pb2.WriteRequest(
                resource_name=name if offset == 0 else "",
                write_offset=offset,
                data=data[offset : offset + MIB],
                finish_write=offset + MIB >= len(data),
            )

    stub.Write(requests(), metadata=md, timeout=CALL_TIMEOUT)
    return d


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    parser.add_argument("--keep", action="store_true", help="keep the throw-away data directory")
    args = parser.parse_args()
    rounds, calls = (3, 200) if args.quick else (7, 1000)

    started = time.time()
    workdir = servers.workdir()
    log(f"asset bench: data in {workdir}; {os.cpu_count()} cores")
    report: dict[str, object] = {"quick": args.quick}
    try:
        ours = servers.Ours(workdir)
        ours.prepare()
        md = ours.metadata
        content = os.urandom(SIZE)
        sri = "sha256-" + base64.b64encode(hashlib.sha256(content).digest()).decode()
        with Origin() as origin:
            url = origin.put("big.tar.gz", content)
            ours.env["REAPI_ASSET_ALLOWED_URLS"] = f"{origin.base}/"
            with ours.serve(1, None) as running:
                ch = grpc.insecure_channel(
                    running.address, options=[("grpc.max_receive_message_length", 64 << 20)]
                )
                grpc.channel_ready_future(ch).result(timeout=30)
                fetch = ra_grpc.FetchStub(ch)
                bs = bs_grpc.ByteStreamStub(ch)
                request = ra_pb2.FetchBlobRequest(
                    uris=[url], qualifiers=[ra_pb2.Qualifier(name="checksum.sri", value=sri)]
                )
                t0 = time.perf_counter()
                first = fetch.FetchBlob(request, metadata=md, timeout=CALL_TIMEOUT)
                download_s = time.perf_counter() - t0
                log(
                    f"first FetchBlob (download from the loopback origin): {SIZE / download_s / 1e6:.0f} MB/s"
                )
                origin.stop()  # from here on, the cache alone

                for _ in range(50):  # warm-up
                    fetch.FetchBlob(request, metadata=md, timeout=CALL_TIMEOUT)
                latencies = []
                for _ in range(calls):
                    t0 = time.perf_counter()
                    reply = fetch.FetchBlob(request, metadata=md, timeout=CALL_TIMEOUT)
                    latencies.append((time.perf_counter() - t0) * 1000)
                    assert reply.blob_digest == first.blob_digest
                p50, p95 = statistics.median(latencies), percentile(latencies, 0.95)
                log(f"FetchBlob, cached: p50 {p50:.2f} ms, p95 {p95:.2f} ms ({calls} calls)")

                plain = write(bs, md, os.urandom(SIZE))
                read(bs, md, plain), read(bs, md, first.blob_digest)  # warm-up, both in the page cache
                served: list[float] = []
                plain_reads: list[float] = []
                for r in range(rounds):
                    for which in ("asset", "plain") if r % 2 == 0 else ("plain", "asset"):
                        t0 = time.perf_counter()
                        if which == "asset":
                            d = fetch.FetchBlob(request, metadata=md, timeout=CALL_TIMEOUT).blob_digest
                            got = read(bs, md, d)
                        else:
                            got = read(bs, md, plain)
                        elapsed = time.perf_counter() - t0
                        if len(got) != SIZE:
                            raise RuntimeError(f"read {len(got)} bytes, not {SIZE}")
                        (served if which == "asset" else plain_reads).append(SIZE / elapsed / 1e6)
                if read(bs, md, first.blob_digest) != content:
                    raise RuntimeError("the cached asset is not what the origin served")
                ch.close()
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    served_mb, plain_mb = statistics.median(served), statistics.median(plain_reads)
    ratio = served_mb / plain_mb
    fetch_ok = p50 <= FETCH_P50_TARGET_MS
    served_ok = ratio >= SERVED_RATIO_TARGET
    rows = [
        ["workload", "value", "target", "result"],
        [
            "FetchBlob, cached, p50",
            f"{p50:.2f} ms",
            f"<= {FETCH_P50_TARGET_MS:.0f} ms",
            "pass" if fetch_ok else "FAIL",
        ],
        ["FetchBlob, cached, p95", f"{p95:.2f} ms", "", ""],
        ["asset served (FetchBlob + Read 64 MiB)", f"{served_mb:.0f} MB/s", "", ""],
        ["plain ByteStream Read 64 MiB", f"{plain_mb:.0f} MB/s", "", ""],
        [
            "asset served / plain read",
            f"{ratio:.2f}",
            f">= {SERVED_RATIO_TARGET:.2f}",
            "pass" if served_ok else "FAIL",
        ],
        ["first FetchBlob (download)", f"{SIZE / download_s / 1e6:.0f} MB/s", "", ""],
    ]
    log("")
    log(text_table.render(rows))
    report.update(
        fetch_ms=latencies,
        served_mbps=served,
        plain_read_mbps=plain_reads,
        download_mbps=SIZE / download_s / 1e6,
        seconds=round(time.time() - started),
    )
    results = BENCH / "results"
    results.mkdir(exist_ok=True)
    out = results / time.strftime("assets-%Y%m%d-%H%M%S.json")
    out.write_text(json.dumps(report, indent=2) + "\n")
    log(f"results: {out.relative_to(BENCH.parent)} ({time.time() - started:.0f} s in all)")
    return 0 if fetch_ok and served_ok else 1


if __name__ == "__main__":
    sys.exit(main())
