"""What an operator scrapes and reads: Prometheus metrics of `reapi serve --processes 2` after
a real Bazel build, the request log's lines, and readiness while a server drains.

One server (two processes, storage on a small tmpfs of its own so a full disk can make a call
fail) and one Bazel server for the module; the drain test starts a one-process server it stops.
"""

import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from reapi.request_metadata import KEY as REQUEST_METADATA_KEY
from tests.support.bazel import bazel_in, genrule_sizes, write_workspace
from tests.support.polling import wait_for
from tests.support.reapi_client import Client, digest
from tests.support.servers import ReapiServer, free_port
from tests.support.tenants import Persona

AC = "build.bazel.remote.execution.v2.ActionCache"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    mount = tmp_path_factory.mktemp("metrics-disk")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0755", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture(scope="module")
def metered(disk: Path) -> Iterator[tuple[ReapiServer, str]]:
    metrics = f"127.0.0.1:{free_port()}"
    env = {"REAPI_METRICS_LISTEN": metrics, "REAPI_STORAGE_EXTERNAL": f"file://{disk}"}
    with ReapiServer("external", env=env, processes=2) as server:
        yield server, metrics


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def scrape(listen: str) -> Samples:
    """Every sample of one scrape, parsed by prometheus_client's own parser."""
    status, text = get(f"http://{listen}/metrics")
    assert status == 200, text
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            out[key] = out.get(key, 0.0) + sample.value
    return out


def settled(listen: str) -> Samples:
    """A scrape once the counts stop moving. Each server process folds what its threads counted
    into its metrics every half second (reapi.metrics), so a scrape of `reapi serve --processes
    N` may trail the last calls by that much; two scrapes more than a fold apart that agree have
    it all."""
    last = [(scrape(listen), time.monotonic())]

    def steady() -> Samples | None:
        before, at = last[0]
        if time.monotonic() - at < 0.6:
            return None
        now = scrape(listen)
        if total(now, "grpc_server_handled_total") == total(before, "grpc_server_handled_total"):
            return now
        last[0] = (now, time.monotonic())
        return None

    return wait_for(steady)  # type: ignore[no-any-return]


def total(samples: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return total(after, name, **labels) - total(before, name, **labels)


@pytest.mark.bazel
def test_the_scrape_counts_what_a_cold_and_a_warm_bazel_build_did(
    tmp_path: Path, metered: tuple[ReapiServer, str], acme: Persona
) -> None:
    server, listen = metered
    pat = acme.pat(acme.developer)
    sizes = genrule_sizes(12, largest=256 * 1024)
    before = settled(listen)
    with bazel_in(tmp_path) as bazel:
        targets = write_workspace(bazel.workspace, sizes, salt=acme.slug)
        flags = (f"--remote_cache={server.url}", f"--remote_header=X-Aspect={pat}")
        cold = bazel.build(*flags)
        assert cold.returncode == 0, cold.output
        bazel.clean()
        warm = bazel.build(*flags)
        assert warm.returncode == 0, warm.output
    hits = warm.processes.get("remote cache hit")
    assert hits == len(targets), warm.output
    after = settled(listen)

    assert delta(before, after, "reapi_action_cache_requests_total", result="hit") == hits
    assert delta(before, after, "reapi_action_cache_requests_total", result="miss") == len(targets)
    ok = delta(before, after, "grpc_server_handled_total", grpc_method="GetActionResult", grpc_code="OK")
    assert ok == hits
    asked = delta(before, after, "grpc_server_handled_total", grpc_method="GetActionResult")
    assert asked == 2 * len(targets)
    assert delta(before, after, "grpc_server_started_total", grpc_method="GetActionResult") == asked
    # The warm build downloaded every output: at least their bytes were read from the CAS.
    assert delta(before, after, "reapi_cas_bytes_total", direction="read") >= sum(sizes)
    assert delta(before, after, "reapi_cas_bytes_total", direction="write") >= sum(sizes)
    assert delta(before, after, "reapi_cas_blobs_total", direction="read") >= len(targets)
    assert delta(before, after, "reapi_find_missing_digests_total", result="missing") >= len(targets)
    # A histogram with its buckets: the +Inf bucket holds every call, and smaller ones exist.
    buckets = {
        dict(ls)["le"]
        for (n, ls) in after
        if n == "grpc_server_handling_seconds_bucket" and dict(ls)["grpc_method"] == "GetActionResult"
    }
    assert "+Inf" in buckets and len(buckets) > 5, buckets
    assert (
        delta(before, after, "grpc_server_handling_seconds_bucket", grpc_method="GetActionResult", le="+Inf")
        == asked
    )
    assert delta(before, after, "grpc_server_handling_seconds_count", grpc_method="GetActionResult") == asked
    stat = {"backend": "file", "op": "find_missing"}
    assert delta(before, after, "reapi_storage_operation_seconds_count", **stat) >= 2
    # No label carries a token, a user or a digest.
    assert not [key for key in after if any(acme.slug in v or "aw_pat_" in v for _k, v in key[1])]

    # One line per call, with the tool's invocation id and the token's prefix, never the token.
    log = server.log.read_text()
    assert pat not in log
    lines = [
        line
        for line in log.splitlines()
        if f"tenant={acme.slug}" in line and f"method={AC}/GetActionResult" in line
    ]
    assert len(lines) == 2 * len(targets), lines[:3]
    assert all(re.search(r"tool_invocation_id=[0-9a-f-]{36} ", line) for line in lines), lines[:3]
    assert all(re.search(r"action_id=[0-9a-f]{64} ", line) for line in lines), lines[:3]
    assert all(f"token_prefix={pat[:13]} " in line for line in lines), lines[:3]
    # The client's address, as gRPC names it (Bazel on this machine: IPv4 or IPv6 loopback).
    peer = re.compile(r" peer=\"?ipv[46]:[0-9a-f.:\[\]%]+:[0-9]+\"?( |$)")
    assert all(peer.search(line) for line in lines), lines[:3]
    assert sum("code=OK " in line for line in lines) == hits


def test_one_scrape_adds_up_the_calls_of_both_server_processes(
    metered: tuple[ReapiServer, str], acme: Persona
) -> None:
    server, listen = metered
    pat = acme.pat(acme.developer)
    before = settled(listen)
    # Each channel is a connection of its own, which SO_REUSEPORT gives either process.
    for _ in range(24):
        with server.channel() as channel:
            stub = re_grpc.CapabilitiesStub(channel)
            stub.GetCapabilities(re_pb2.GetCapabilitiesRequest(), metadata=(("x-aspect", pat),))
    after = settled(listen)
    method = {"grpc_method": "GetCapabilities", "grpc_code": "OK"}
    assert delta(before, after, "grpc_server_handled_total", **method) == 24


def test_the_log_line_of_a_failed_call_carries_the_request_id_its_client_was_shown(
    metered: tuple[ReapiServer, str], disk: Path, acme: Persona
) -> None:
    server, listen = metered
    pat = acme.pat(acme.developer)
    before = settled(listen)
    with server.channel() as channel:
        client = Client(channel, pat, acme.slug)
        filler = disk / "filler"
        try:
            with open(filler, "wb") as f:
                try:
                    while True:
                        f.write(b"\0" * 256 * 1024)
                        f.flush()
                except OSError:
                    pass
            with pytest.raises(grpc.RpcError) as caught:
                client.write(os.urandom(512 * 1024))
        finally:
            filler.unlink(missing_ok=True)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        found = re.search(r"\(request ([0-9a-f]{12})\)", caught.value.details() or "")
        assert found, caught.value.details()

        with pytest.raises(grpc.RpcError) as refused:
            re_grpc.ActionCacheStub(channel).GetActionResult(
                re_pb2.GetActionResultRequest(instance_name=acme.slug, action_digest=digest(b"x")),
                metadata=(("x-aspect", "aw_pat_" + "0" * 36),),
            )
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

    request = found.group(1)
    line = wait_for(
        lambda: next((ln for ln in server.log.read_text().splitlines() if f"request_id={request}" in ln), "")
    )
    assert "method=google.bytestream.ByteStream/Write" in line
    assert "code=RESOURCE_EXHAUSTED" in line
    assert f"tenant={acme.slug}" in line
    assert pat not in line
    after = settled(listen)
    assert (
        delta(before, after, "grpc_server_handled_total", grpc_method="Write", grpc_code="RESOURCE_EXHAUSTED")
        == 1
    )
    assert delta(before, after, "reapi_auth_failures_total", reason="unauthenticated") == 1
    assert (
        delta(
            before,
            after,
            "grpc_server_handled_total",
            grpc_method="GetActionResult",
            grpc_code="UNAUTHENTICATED",
        )
        == 1
    )


def health(server: ReapiServer) -> int:
    with server.channel() as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    return int(reply.status)


def test_a_one_process_server_labels_tenants_when_asked_logs_json_and_is_not_ready_without_storage_or_while_it_drains(
    acme: Persona, tmp_path: Path
) -> None:
    listen = f"127.0.0.1:{free_port()}"
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    env = {
        "REAPI_STORAGE_EXTERNAL": f"file://{blobs}",
        "REAPI_METRICS_LISTEN": listen,
        "REAPI_DRAIN_SECONDS": "600",
        "REAPI_METRICS_TENANT_LABELS": "1",
        "REAPI_LOG_FORMAT": "json",
    }
    server = ReapiServer("external", env=env)
    with server:
        pat = acme.pat(acme.developer)
        with server.channel() as channel, pytest.raises(grpc.RpcError) as missed:
            Client(channel, pat, acme.slug).get_action_result(digest(b"never built"))
        assert missed.value.code() == grpc.StatusCode.NOT_FOUND
        samples = scrape(listen)
        assert total(samples, "reapi_action_cache_requests_total", tenant=acme.slug, result="miss") == 1

        line = wait_for(
            lambda: next((ln for ln in server.log.read_text().splitlines() if "GetActionResult" in ln), "")
        )
        logged = json.loads(line[line.index("{") :])
        assert logged["method"] == f"{AC}/GetActionResult"
        assert logged["code"] == "NOT_FOUND"
        assert logged["tenant"] == acme.slug
        assert logged["token_prefix"] == pat[:13]
        assert pat not in line

        assert get(f"http://{listen}/healthz")[0] == 200
        assert get(f"http://{listen}/readyz")[0] == 200
        # Its storage gone (a volume unmounted): not ready, NOT_SERVING; back: ready again.
        blobs.rename(tmp_path / "away")
        assert wait_for(lambda: get(f"http://{listen}/readyz")[0] == 503)
        assert health(server) == health_pb2.HealthCheckResponse.NOT_SERVING
        (tmp_path / "away").rename(blobs)
        assert wait_for(lambda: get(f"http://{listen}/readyz")[0] == 200)
        assert health(server) == health_pb2.HealthCheckResponse.SERVING

        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        assert wait_for(lambda: get(f"http://{listen}/readyz")[0] == 503)
        assert health(server) == health_pb2.HealthCheckResponse.NOT_SERVING
        # Still alive and answering while it drains.
        assert get(f"http://{listen}/healthz")[0] == 200
        server.proc.kill()


def test_the_metrics_listener_answers_404_for_other_paths(metered: tuple[ReapiServer, str]) -> None:
    _server, listen = metered
    assert get(f"http://{listen}/nothing")[0] == 404
    status, text = get(f"http://{listen}/metrics")
    assert status == 200
    families = {family.name for family in text_string_to_metric_families(text)}
    # Read from the database at scrape time, by the supervisor alone.
    assert {"reapi_execution_queue_length", "reapi_workers_online", "grpc_server_started"} <= families


def test_a_clients_request_metadata_cannot_forge_a_request_log_line(
    metered: tuple[ReapiServer, str], acme: Persona
) -> None:
    server, _listen = metered
    pat = acme.pat(acme.developer)
    forged = "x\nmethod=forged code=OK"
    meta = re_pb2.RequestMetadata(tool_invocation_id=forged, action_id="a b")
    with server.channel() as channel, pytest.raises(grpc.RpcError) as missed:
        re_grpc.ActionCacheStub(channel).GetActionResult(
            re_pb2.GetActionResultRequest(instance_name=acme.slug, action_digest=digest(b"forged")),
            metadata=(("x-aspect", pat), (REQUEST_METADATA_KEY, meta.SerializeToString())),
        )
    assert missed.value.code() == grpc.StatusCode.NOT_FOUND
    line = wait_for(
        lambda: next((ln for ln in server.log.read_text().splitlines() if "method=forged" in ln), "")
    )
    assert line.startswith("method=build.bazel.remote.execution.v2.ActionCache/GetActionResult ")
    assert 'tool_invocation_id="x\\nmethod=forged code=OK" action_id="a b" ' in line
    assert not any(ln.startswith("method=forged") for ln in server.log.read_text().splitlines())
