"""Abandoned partial uploads: the maintenance job removes them once REAPI_UPLOAD_EXPIRY_HOURS
have passed without a byte, never one a stream holds; while they live they count in their
tenant's usage, and a write that would take the tenant past its quota counting them is
refused. Real partial uploads over a socket, backdated on disk, and the real `manage.py
maintenance` worker."""

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from reapi import clusters, eviction, quotas
from reapi.digests import Digest
from reapi.gen.google.bytestream import bytestream_pb2 as bs_pb2
from reapi.models import TenantQuota
from reapi.s3store import S3BlobStore
from tests.support.reapi_client import Client, digest
from tests.support.seaweed import SeaweedS3
from tests.support.servers import ROOT, ReapiServer, stop_process
from tests.support.storage_helpers import s3_store, within
from tests.support.tenants import Persona

KIB = 1024
HOUR = 3600.0


@pytest.fixture
def client(external_server: ReapiServer, acme: Persona) -> Client:
    return Client(external_server.channel(), acme.pat())


def abandon(client: Client, data: bytes, sent: int) -> str:
    """Send the first `sent` bytes of `data` and end the stream without finish_write, as a
    client that went away does; returns the upload's resource name."""
    name = client.upload_resource(digest(data))

    def first_part() -> Iterator[bs_pb2.WriteRequest]:
        yield bs_pb2.WriteRequest(resource_name=name, write_offset=0, data=data[:sent])

    with pytest.raises(grpc.RpcError) as info:
        client.bytestream.Write(first_part(), metadata=client.metadata)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert committed(client, name) == sent
    return name


def committed(client: Client, name: str) -> int:
    reply = client.bytestream.QueryWriteStatus(
        bs_pb2.QueryWriteStatusRequest(resource_name=name), metadata=client.metadata
    )
    return int(reply.committed_size)


def resume(client: Client, name: str, data: bytes, offset: int) -> int:
    def rest() -> Iterator[bs_pb2.WriteRequest]:
        yield bs_pb2.WriteRequest(
            resource_name=name, write_offset=offset, data=data[offset:], finish_write=True
        )

    return int(client.bytestream.Write(rest(), metadata=client.metadata).committed_size)


def partial_file(tenant: str, name: str) -> Path:
    """Where the server keeps the partial of upload `name` (same settings as this process)."""
    parts = name.split("/")
    upload_id = parts[parts.index("uploads") + 1]
    hash_, size = parts[-2], int(parts[-1])
    cas = clusters.backend("reapi-external").cas
    return cas.upload_path(tenant, upload_id, Digest(hash_, size))


def backdate(path: Path, hours: float) -> None:
    when = time.time() - hours * HOUR
    os.utime(path, (when, when))


def test_the_maintenance_job_removes_an_abandoned_upload_and_a_fresh_one_still_resumes(
    tmp_path: Path, client: Client, acme: Persona
) -> None:
    old, fresh = os.urandom(300 * KIB), os.urandom(300 * KIB)
    old_name = abandon(client, old, 100 * KIB)
    fresh_name = abandon(client, fresh, 120 * KIB)
    old_file, fresh_file = partial_file(acme.slug, old_name), partial_file(acme.slug, fresh_name)
    assert old_file.stat().st_size == 100 * KIB and fresh_file.stat().st_size == 120 * KIB
    backdate(old_file, 25)  # a day and an hour without a byte: past the default 24 hours
    backdate(fresh_file, 23)

    # `manage.py maintenance`: the worker on the maintenance queue with beat, every second here.
    log = tmp_path / "maintenance.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "maintenance", f"--schedule={tmp_path / 'beat'}"],
            cwd=ROOT,
            env={**os.environ, "REAPI_EVICTION_INTERVAL_SECONDS": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        within(60, lambda: True if not old_file.exists() else None, interval=0.5)
    finally:
        stop_process(worker, timeout=20)
    assert "expired uploads" in log.read_text(), log.read_text()[-3000:]

    # The abandoned one is gone: nothing committed, and a resume from where it was is refused.
    assert committed(client, old_name) == 0
    with pytest.raises(grpc.RpcError) as info:
        resume(client, old_name, old, 100 * KIB)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "0 bytes committed" in (info.value.details() or "")
    assert client.missing(digest(old)) == [digest(old)]

    # The fresh one is kept and resumes where it stopped.
    assert fresh_file.stat().st_size == 120 * KIB
    assert committed(client, fresh_name) == 120 * KIB
    assert resume(client, fresh_name, fresh, 120 * KIB) == len(fresh)
    assert client.read(digest(fresh)) == fresh
    assert not fresh_file.exists()


def test_expiry_never_takes_a_partial_that_a_stream_is_writing(client: Client, acme: Persona) -> None:
    data = os.urandom(200 * KIB)
    name = client.upload_resource(digest(data))
    paused, go_on = threading.Event(), threading.Event()

    def slow_client() -> Iterator[bs_pb2.WriteRequest]:
        yield bs_pb2.WriteRequest(resource_name=name, write_offset=0, data=data[: 50 * KIB])
        paused.set()
        go_on.wait(60)
        yield bs_pb2.WriteRequest(write_offset=50 * KIB, data=data[50 * KIB :], finish_write=True)

    reply: list[int] = []
    writer = threading.Thread(
        target=lambda: reply.append(
            client.bytestream.Write(slow_client(), metadata=client.metadata).committed_size
        )
    )
    writer.start()
    try:
        assert paused.wait(30)
        path = partial_file(acme.slug, name)
        # The stream is open: whatever its file's age, expiry leaves it.
        within(10, lambda: True if path.exists() and path.stat().st_size == 50 * KIB else None)
        backdate(path, 48)
        eviction.expire_uploads()
        assert path.exists()
    finally:
        go_on.set()
        writer.join(60)
    assert reply == [len(data)]
    assert client.read(digest(data)) == data


def test_partial_uploads_count_in_the_tenants_usage_and_quota(client: Client, acme: Persona) -> None:
    quotas.set_quota(acme.tenant, "external", max_bytes=100 * KIB)
    blob = os.urandom(90 * KIB)
    name = abandon(client, blob, 80 * KIB)

    outcome = next(o for o in eviction.evict_all() if o.tenant == acme.slug)
    assert (outcome.parked_bytes, outcome.used_bytes, outcome.evictable_bytes) == (80 * KIB, 80 * KIB, 0)
    row = TenantQuota.objects.get(tenant=acme.tenant, cluster="external")
    assert (row.used_bytes, row.evictable_bytes) == (80 * KIB, 0)

    # A server process that starts now knows only the measurement: 80 KiB parked of 100.
    with ReapiServer("external") as fresh:
        other = Client(fresh.channel(), client.token)
        too_much = os.urandom(30 * KIB)
        with pytest.raises(grpc.RpcError) as info:
            other.write(too_much)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "hard limit" in (info.value.details() or "")
        reply = other.upload(too_much)
        assert reply.responses[0].status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        assert other.missing(digest(too_much)) == [digest(too_much)]
        # The partial's own bytes are not asked for twice: its last 10 KiB fit.
        assert resume(other, name, blob, 80 * KIB) == len(blob)
        assert other.read(digest(blob)) == blob


def test_an_unfinished_multipart_upload_in_the_bucket_is_aborted_once_expired(tmp_path: Path) -> None:
    with SeaweedS3(tmp_path / "seaweed") as s3:
        store = s3_store(s3.url(f"x{uuid.uuid4().hex[:8]}"))
        elsewhere = s3_store(s3.url(f"y{uuid.uuid4().hex[:8]}"))
        mine, theirs = start_multipart(s3, store), start_multipart(s3, elsewhere)

        assert store.abort_multipart_uploads(time.time() - 24 * HOUR) == 0  # begun just now
        assert open_multipart(s3, store) == [mine]
        assert store.abort_multipart_uploads(time.time() + 1) == 1
        assert open_multipart(s3, store) == []
        assert open_multipart(s3, elsewhere) == [theirs]  # another store's prefix: not ours


def start_multipart(s3: SeaweedS3, store: S3BlobStore) -> str:
    """A multipart upload with one part sent and never completed, as a process killed in the
    middle of a large put leaves it."""
    key = f"{store.location}/acme/cas/ab/{uuid.uuid4().hex}"
    client = s3.client()
    upload = client.create_multipart_upload(Bucket=s3.bucket, Key=key)
    client.upload_part(
        Bucket=s3.bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=os.urandom(64 * KIB)
    )
    return str(upload["UploadId"])


def open_multipart(s3: SeaweedS3, store: S3BlobStore) -> list[str]:
    reply = s3.client().list_multipart_uploads(Bucket=s3.bucket, Prefix=f"{store.location}/")
    return [u["UploadId"] for u in reply.get("Uploads", [])]
