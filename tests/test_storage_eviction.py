"""Eviction and quotas: least recently used first, never a blob used in the last 3 hours, dangling
action results become misses, and a tenant over its hard limit with nothing evictable is refused
writes while its reads keep working. Eviction is called directly, and once by a real Celery
worker on its beat schedule."""

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from reapi import clusters, eviction, quotas
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from reapi.models import TenantQuota
from reapi.presence import EVICTION_GRACE_SECONDS
from tests.support.reapi_client import Client, digest
from tests.support.servers import ROOT, ReapiServer
from tests.support.storage_helpers import action_with_outputs, within
from tests.support.tenants import Persona

HOUR = 3600.0


@pytest.fixture
def client(external_server: ReapiServer, acme: Persona) -> Client:
    return Client(external_server.channel(), acme.pat())


def blob_path(tenant: str, data: bytes) -> Path:
    store = clusters.backend("reapi-external").store
    d = digest(data)
    return Path(store.root) / tenant / "cas" / d.hash[:2] / d.hash  # type: ignore[attr-defined]


def last_used(tenant: str, data: bytes, hours_ago: float) -> None:
    when = time.time() - hours_ago * HOUR
    os.utime(blob_path(tenant, data), (when, when))


def outcome_for(outcomes: list[eviction.Outcome], tenant: str) -> eviction.Outcome:
    return next(o for o in outcomes if o.tenant == tenant)


def test_it_evicts_least_recently_used_first_and_never_a_recent_blob(client: Client, acme: Persona) -> None:
    blobs = [os.urandom(10_000) for _ in range(5)]
    client.upload(*blobs)
    for data, hours in zip(blobs, (5, 8, 6, 7), strict=False):  # blobs[4] was just used
        last_used(acme.slug, data, hours)
    quotas.set_quota(acme.tenant, "external", max_bytes=25_000)

    outcome = outcome_for(eviction.evict_all(), acme.slug)
    assert (outcome.evicted_blobs, outcome.used_bytes) == (3, 20_000)
    gone = [not blob_path(acme.slug, b).exists() for b in blobs]
    assert gone == [False, True, True, True, False]  # the 8, 7 and 6 hour old ones

    # A quota below what was used in the grace period: all old blobs go, the recent one stays.
    quotas.set_quota(acme.tenant, "external", max_bytes=5_000)
    outcome = outcome_for(eviction.evict_all(), acme.slug)
    assert (outcome.evicted_blobs, outcome.used_bytes, outcome.evictable_bytes) == (1, 10_000, 0)
    assert blob_path(acme.slug, blobs[4]).exists()
    assert outcome.over_hard_limit
    row = TenantQuota.objects.get(tenant=acme.tenant, cluster="external")
    assert (row.used_bytes, row.evictable_bytes, row.evicted_bytes) == (10_000, 0, 10_000)
    assert row.measured_at is not None


def test_an_action_result_whose_outputs_were_evicted_is_a_miss(client: Client, acme: Persona) -> None:
    out = os.urandom(4000)
    action, result = action_with_outputs(client, out)
    client.update_action_result(action, result)
    assert client.get_action_result(action).output_files[0].digest == digest(out)
    quotas.set_quota(acme.tenant, "external", max_bytes=1)

    eviction.evict_all(now=time.time() + EVICTION_GRACE_SECONDS + HOUR)  # four hours on
    assert not blob_path(acme.slug, out).exists()

    # A process that has not seen the blob, as every process will once its presence cache
    # trusts nothing older than an hour: the entry is a miss, never a dangling hit.
    with ReapiServer("external") as cold, pytest.raises(grpc.RpcError) as info:
        Client(cold.channel(), client.token).get_action_result(action)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert digest(out).hash in (info.value.details() or "")


def refused(call: Callable[[], object]) -> grpc.RpcError | None:
    try:
        call()
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return exc
        raise
    return None


def test_over_the_hard_limit_with_nothing_evictable_writes_are_refused_and_reads_work(
    client: Client, acme: Persona
) -> None:
    quotas.set_quota(acme.tenant, "external", max_bytes=1_000_000)
    kept = [os.urandom(20_000) for _ in range(3)]
    action, result = action_with_outputs(client, *kept)
    client.update_action_result(action, result)
    # The admin lowers the quota below what the tenant used in the last three hours.
    quotas.set_quota(acme.tenant, "external", max_bytes=40_000)
    outcome = outcome_for(eviction.evict_all(), acme.slug)
    assert (outcome.evicted_blobs, outcome.evictable_bytes, outcome.over_hard_limit) == (0, 0, True)

    def batch_refused() -> tuple[re_pb2.BatchUpdateBlobsResponse, bytes] | None:
        new = os.urandom(5000)  # a new one each try: one accepted before the refusal is stored
        reply = client.upload(kept[0], new)
        return (reply, new) if reply.responses[1].status.code != 0 else None

    (reply, new), seconds = within(5, batch_refused)
    assert seconds < 5
    # Per blob: the one already stored costs nothing and is fine, the new one is refused.
    assert reply.responses[0].status.code == 0
    assert reply.responses[1].status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert "hard limit" in reply.responses[1].status.message
    exc = refused(lambda: client.write(os.urandom(50_000)))
    assert exc is not None and "hard limit" in (exc.details() or "")
    other_action = digest(b"another action " + os.urandom(8))
    assert refused(lambda: client.update_action_result(other_action, result)) is not None
    assert client.missing(digest(new)) == [digest(new)]

    # Reads keep working.
    assert client.missing(*map(digest, kept)) == []
    assert [r.data for r in client.batch_read(*map(digest, kept)).responses] == kept
    assert client.read(digest(kept[1])) == kept[1]
    assert client.get_action_result(action).output_files[2].digest == digest(kept[2])

    # Hours later the blobs may be evicted: the job makes room and writes are accepted again.
    later = outcome_for(eviction.evict_all(now=time.time() + EVICTION_GRACE_SECONDS + HOUR), acme.slug)
    assert later.used_bytes <= 40_000 and not later.over_hard_limit

    def batch_accepted() -> bool | None:
        return True if client.upload(new).responses[0].status.code == 0 else None

    within(5, batch_accepted)
    assert client.missing(digest(new)) == []


def test_the_periodic_job_evicts_through_a_real_celery_worker(
    tmp_path: Path, client: Client, acme: Persona
) -> None:
    blobs = [os.urandom(10_000) for _ in range(3)]
    client.upload(*blobs)
    for data, hours in zip(blobs, (9, 8, 7), strict=True):
        last_used(acme.slug, data, hours)
    quota = quotas.set_quota(acme.tenant, "external", max_bytes=15_000)

    # `manage.py maintenance`: the worker on the maintenance queue with beat, every second here.
    log = tmp_path / "celery.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "manage.py"),
                "maintenance",
                f"--schedule={tmp_path / 'beat-schedule'}",
            ],
            cwd=ROOT,
            env={**os.environ, "REAPI_EVICTION_INTERVAL_SECONDS": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        def measured() -> TenantQuota | None:
            row = TenantQuota.objects.get(pk=quota.pk)
            return row if row.measured_at is not None else None

        row, _ = within(60, measured, interval=0.5)
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    assert row.used_bytes == 10_000, log.read_text()[-3000:]
    assert [blob_path(acme.slug, b).exists() for b in blobs] == [False, False, True]
    assert "reapi.evict" in log.read_text()
