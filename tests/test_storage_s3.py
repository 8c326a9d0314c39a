"""S3 storage (django-storages against a real SeaweedFS) with its presence index.

Two server processes share one bucket prefix: `writer` takes the uploads, `peer` starts cold
(nothing in its presence cache), as another replica of the cluster would.
"""

import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from reapi import eviction, quotas
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from reapi.models import Blob, TenantQuota
from reapi.s3store import S3BlobStore
from tests.support.bazel import bazel_in, genrule_sizes, write_workspace
from tests.support.reapi_client import Client, digest
from tests.support.seaweed import SeaweedS3
from tests.support.servers import ReapiServer
from tests.support.storage_helpers import action_with_outputs, s3_store
from tests.support.tenants import Persona

MIB = 1024 * 1024


class S3Cluster:
    def __init__(self, s3: SeaweedS3, url: str, writer: ReapiServer, peer: ReapiServer) -> None:
        self.s3, self.url, self.writer, self.peer = s3, url, writer, peer
        self.prefix = url.split("?")[0].split("/", 3)[3]
        self.store: S3BlobStore = s3_store(url)

    def object_keys(self, tenant: str) -> set[str]:
        return {k.removeprefix(f"{self.prefix}/") for k in self.s3.keys(f"{self.prefix}/{tenant}/")}

    def indexed(self, tenant: str) -> set[str]:
        return set(
            Blob.objects.filter(store=self.store.store_id, tenant=tenant).values_list("key", flat=True)
        )


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    with SeaweedS3(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


@pytest.fixture(scope="module")
def cluster(s3: SeaweedS3) -> Iterator[S3Cluster]:
    url = s3.url(f"m{uuid.uuid4().hex[:8]}")
    # The readiness check's HEAD every few seconds would land among the requests these tests
    # count: here it looks once an hour.
    env = {"REAPI_STORAGE_EXTERNAL": url, "REAPI_READINESS_SECONDS": "3600"}
    with ReapiServer("external", env=env) as writer, ReapiServer("external", env=env) as peer:
        yield S3Cluster(s3, url, writer, peer)


def clients(cluster: S3Cluster, acme: Persona) -> tuple[Client, Client]:
    pat = acme.pat()
    return Client(cluster.writer.channel(), pat), Client(cluster.peer.channel(), pat)


def test_it_stores_finds_and_reads_blobs_in_the_bucket(cluster: S3Cluster, acme: Persona) -> None:
    writer, peer = clients(cluster, acme)
    blobs = [os.urandom(n) for n in (1, 100, 40_000)]
    assert writer.missing(*map(digest, blobs)) == list(map(digest, blobs))
    reply = writer.upload(*blobs)
    assert [r.status.code for r in reply.responses] == [0, 0, 0]
    assert peer.missing(*map(digest, blobs)) == []
    assert [r.data for r in peer.batch_read(*map(digest, blobs)).responses] == blobs

    big = os.urandom(20 * MIB)  # above the multipart threshold: uploaded in parts
    assert writer.write(big) == len(big)
    assert peer.read(digest(big)) == big
    assert peer.read(digest(big), offset=5 * MIB, limit=MIB) == big[5 * MIB : 6 * MIB]

    keys = {f"{acme.slug}/cas/{d.hash[:2]}/{d.hash}" for d in map(digest, [*blobs, big])}
    assert cluster.object_keys(acme.slug) == keys
    assert cluster.indexed(acme.slug) == keys


def test_find_missing_of_10k_digests_asks_the_index_not_s3(cluster: S3Cluster, acme: Persona) -> None:
    writer, peer = clients(cluster, acme)
    present = [os.urandom(64) for _ in range(1000)]
    for i in range(0, len(present), 250):
        writer.upload(*present[i : i + 250])
    absent = [digest(os.urandom(64)) for _ in range(9000)]
    wanted = [*map(digest, present), *absent]

    before = settled_request_count(cluster.s3)
    missing = peer.missing(*wanted)  # a cold process: nothing known, everything from the index
    assert missing == absent
    # Not one request reached the bucket: the answer came from the index alone. How fast that
    # is belongs to bench/storage.py (FindMissing of 10k on S3), not to a timed test, whose
    # bound would only measure how busy the CI machine is.
    assert settled_request_count(cluster.s3) == before


def settled_request_count(s3: SeaweedS3) -> int:
    """The bucket's request counter once it stops moving (SeaweedFS counts a request as it
    finishes, so the last uploads may land just after their replies)."""
    count = s3.request_count()
    for _ in range(30):
        time.sleep(0.3)
        again = s3.request_count()
        if again == count:
            return count
        count = again
    raise AssertionError("SeaweedFS's request counter kept moving: something else uses the bucket")


def test_a_blob_lost_from_the_bucket_is_reported_missing_not_served(
    cluster: S3Cluster, acme: Persona
) -> None:
    writer, peer = clients(cluster, acme)
    out, plain = os.urandom(3000), os.urandom(2000)
    action, result = action_with_outputs(writer, out)
    writer.update_action_result(action, result)
    writer.upload(plain)
    keys = {}
    for data in (out, plain):
        d = digest(data)
        keys[data] = f"{acme.slug}/cas/{d.hash[:2]}/{d.hash}"
        cluster.s3.client().delete_object(Bucket=cluster.s3.bucket, Key=f"{cluster.prefix}/{keys[data]}")
    assert set(keys.values()) <= cluster.indexed(acme.slug)  # the index still lists them ...

    # ... but a hit is checked against the bucket itself: a miss, not a dangling hit,
    with pytest.raises(grpc.RpcError) as info:
        peer.get_action_result(action)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert keys[out] not in cluster.indexed(acme.slug)
    # and a read finds the other one gone: reported missing, not served.
    reply = peer.batch_read(digest(plain))
    assert reply.responses[0].status.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert keys[plain] not in cluster.indexed(acme.slug)
    assert peer.missing(digest(out), digest(plain)) == [digest(out), digest(plain)]

    peer.upload(out, plain)  # the client uploads them again, and all is well
    assert peer.get_action_result(action).output_files[0].digest == digest(out)
    assert peer.read(digest(plain)) == plain


def test_a_blob_reported_present_is_touched_first_so_eviction_cannot_take_it(
    cluster: S3Cluster, acme: Persona
) -> None:
    writer, _ = clients(cluster, acme)
    blob = os.urandom(1000)
    writer.upload(blob)
    key = f"{acme.slug}/cas/{digest(blob).hash[:2]}/{digest(blob).hash}"
    rows = Blob.objects.filter(store=cluster.store.store_id, key=key)
    rows.update(touched_at=time.time() - 5 * 3600)  # last used five hours ago

    assert cluster.store.stat_many([key]) != {}  # as a FindMissingBlobs would ask
    assert rows.get().touched_at > time.time() - 60
    freed = cluster.store.evict([key], untouched_since=time.time() - 3 * 3600)
    assert freed == 0 and key in cluster.object_keys(acme.slug)


def test_reconcile_makes_the_index_match_the_bucket(cluster: S3Cluster, acme: Persona) -> None:
    writer, _ = clients(cluster, acme)
    kept, lost = os.urandom(500), os.urandom(500)
    writer.upload(kept, lost)
    lost_key = f"{acme.slug}/cas/{digest(lost).hash[:2]}/{digest(lost).hash}"
    stray = os.urandom(700)
    stray_key = f"{acme.slug}/cas/{digest(stray).hash[:2]}/{digest(stray).hash}"
    client = cluster.s3.client()
    client.delete_object(Bucket=cluster.s3.bucket, Key=f"{cluster.prefix}/{lost_key}")
    client.put_object(Bucket=cluster.s3.bucket, Key=f"{cluster.prefix}/{stray_key}", Body=stray)
    time.sleep(0.01)  # rows touched before the listing starts

    added, dropped = cluster.store.reconcile()
    assert (added, dropped) == (1, 1)
    assert cluster.indexed(acme.slug) == cluster.object_keys(acme.slug)
    assert stray_key in cluster.indexed(acme.slug)


def test_concurrent_writers_of_one_digest_both_succeed(cluster: S3Cluster, acme: Persona) -> None:
    writer, peer = clients(cluster, acme)
    blob = os.urandom(100_000)
    codes: list[int] = []

    def upload(client: Client) -> None:
        codes.append(client.upload(blob).responses[0].status.code)

    threads = [threading.Thread(target=upload, args=(c,)) for c in (writer, peer, writer, peer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [0, 0, 0, 0]
    d = digest(blob)
    key = f"{acme.slug}/cas/{d.hash[:2]}/{d.hash}"
    assert cluster.object_keys(acme.slug) == {key}
    assert Blob.objects.filter(store=cluster.store.store_id, key=key).count() == 1


def test_eviction_removes_objects_and_index_rows_least_recently_used_first(
    cluster: S3Cluster, acme: Persona
) -> None:
    writer, _ = clients(cluster, acme)
    blobs = [os.urandom(10_000) for _ in range(4)]
    writer.upload(*blobs)
    keys = [f"{acme.slug}/cas/{digest(b).hash[:2]}/{digest(b).hash}" for b in blobs]
    now = time.time()
    # Last used 8, 7, 6 and 5 hours ago (the index is where S3 keeps "last used").
    for hours, key in zip((8, 7, 6, 5), keys, strict=True):
        Blob.objects.filter(store=cluster.store.store_id, key=key).update(touched_at=now - hours * 3600)
    quota = quotas.set_quota(acme.tenant, "external", max_bytes=25_000)

    outcome = eviction.evict_tenant(cluster.store, quota, now)
    assert (outcome.evicted_blobs, outcome.evicted_bytes, outcome.used_bytes) == (2, 20_000, 20_000)
    assert cluster.object_keys(acme.slug) == set(keys[2:])
    assert cluster.indexed(acme.slug) == set(keys[2:])
    row = TenantQuota.objects.get(pk=quota.pk)
    assert (row.used_bytes, row.evictable_bytes) == (20_000, 20_000)


@pytest.mark.bazel
def test_bazel_gets_every_action_from_the_cache_on_s3(
    tmp_path: Path, cluster: S3Cluster, acme: Persona
) -> None:
    pat = acme.pat(acme.developer)
    with bazel_in(tmp_path) as bazel:
        targets = write_workspace(bazel.workspace, genrule_sizes(20, largest=5 * MIB), salt=acme.slug)
        flags = (f"--remote_cache={cluster.writer.url}", f"--remote_header=X-Aspect={pat}")
        first = bazel.build(*flags)
        assert first.returncode == 0, first.output
        built = bazel.outputs()
        bazel.clean()
        # Through the other process, which never saw these blobs: hits come from S3 and the index.
        second = bazel.build(f"--remote_cache={cluster.peer.url}", f"--remote_header=X-Aspect={pat}")
        assert second.returncode == 0, second.output
        assert second.processes.get("remote cache hit") == len(targets), second.output
        assert bazel.outputs() == built
    assert len(cluster.object_keys(acme.slug)) > len(targets)


def test_an_action_result_is_stored_in_the_bucket(cluster: S3Cluster, acme: Persona) -> None:
    writer, peer = clients(cluster, acme)
    action, result = action_with_outputs(writer, b"out")
    writer.update_action_result(action, result)
    assert peer.get_action_result(action) == re_pb2.ActionResult(
        output_files=result.output_files, exit_code=0
    )
    assert f"{acme.slug}/ac/{action.hash[:2]}/{action.hash}" in cluster.object_keys(acme.slug)
