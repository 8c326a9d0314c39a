"""Storage faults over a real socket: a full disk (a small tmpfs), read-only storage (the same
tmpfs remounted read-only) and an unreachable bucket (a stopped SeaweedFS).

A full disk is RESOURCE_EXHAUSTED, storage that cannot be written or reached is UNAVAILABLE,
reads of read-only storage keep working, and no client message carries a server path or an
exception's text: only the kind of failure and a request id, which names the server's log
line with the details.
"""

import errno
import logging
import os
import re
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from reapi import faults
from reapi.errors import Internal
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from reapi.gen.google.bytestream import bytestream_pb2 as bs_pb2
from reapi.models import Blob
from tests.support.reapi_client import Client, digest
from tests.support.seaweed import SeaweedS3
from tests.support.servers import ReapiServer
from tests.support.storage_helpers import action_with_outputs
from tests.support.tenants import Persona

KIB = 1024
REQUEST_ID = re.compile(r"\(request ([0-9a-f]{12})\)")
# What must never reach a client: the text of an OSError or of a botocore exception.
LEAKS = ("Errno", "No space left", "Read-only file system", "Could not connect", "Traceback", "/")


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of its own, as the server's storage directory."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)
        if os.path.ismount(mount):
            subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.fixture
def disk_server(disk: Path) -> Iterator[ReapiServer]:
    with ReapiServer("external", env={"REAPI_STORAGE_EXTERNAL": f"file://{disk}"}) as server:
        yield server


def fill(disk: Path, leave: int = 0) -> None:
    """Take the disk's free space, all of it or all but about `leave` bytes."""
    st = os.statvfs(disk)
    todo = st.f_bavail * st.f_frsize - leave
    with open(disk / f"filler-{uuid.uuid4().hex}", "wb") as f:
        try:
            while todo > 0:
                todo -= f.write(b"\0" * min(todo, 256 * KIB))
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def free_the_disk(disk: Path) -> None:
    for filler in disk.glob("filler-*"):
        filler.unlink()


def staged_files(disk: Path) -> list[str]:
    """Files in the storage's spool: staging files and partial uploads."""
    spool = disk / ".tmp"
    return [os.path.join(d, n) for d, _dirs, names in os.walk(spool) for n in names]


def refused(code: grpc.StatusCode, call: Callable[[], object]) -> str:
    """Run `call`; it must fail with `code`. Returns the details."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == code, info.value.details()
    return info.value.details() or ""


def check_message(details: str, server: ReapiServer, *, detail_in_log: str) -> str:
    """The client's message names a request and leaks nothing; the server's log has that
    request with the details. Returns the request id."""
    found = REQUEST_ID.search(details)
    assert found, details
    for leak in LEAKS:
        assert leak not in details, details
    request = found.group(1)
    lines = [line for line in server.log.read_text().splitlines() if f"request {request}" in line]
    assert lines, f"request {request} is not in the server's log"
    assert detail_in_log in "\n".join(lines), lines
    return request


def chunks(data: bytes, name: str, size: int = 64 * KIB) -> Iterator[bs_pb2.WriteRequest]:
    for offset in range(0, len(data), size):
        yield bs_pb2.WriteRequest(
            resource_name=name if offset == 0 else "",
            write_offset=offset,
            data=data[offset : offset + size],
            finish_write=offset + size >= len(data),
        )


def test_a_full_disk_refuses_writes_as_resource_exhausted_and_names_only_a_request(
    disk: Path, disk_server: ReapiServer, acme: Persona
) -> None:
    client = Client(disk_server.channel(), acme.pat())
    kept = os.urandom(10 * KIB)
    assert client.upload(kept).responses[0].status.code == 0
    action, result = action_with_outputs(client, os.urandom(KIB))
    client.update_action_result(action, result)

    # A ByteStream Write that runs out of space in the middle of the blob.
    fill(disk, leave=200 * KIB)
    big = os.urandom(1024 * KIB)
    name = client.upload_resource(digest(big))
    details = refused(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        lambda: client.bytestream.Write(chunks(big, name), metadata=client.metadata),
    )
    assert details.startswith("storage is full"), details
    check_message(details, disk_server, detail_in_log="No space left on device")
    assert str(disk) in disk_server.log.read_text()  # the path is for the operator only
    # What arrived is gone, so the space it took is back; nothing was stored.
    assert staged_files(disk) == []
    assert client.missing(digest(big)) == [digest(big)]

    # Not one byte left: a batch refuses each new blob, and the one already stored is fine.
    fill(disk)
    new = [os.urandom(3 * KIB), os.urandom(5 * KIB)]
    reply = client.upload(kept, *new)
    codes = [r.status.code for r in reply.responses]
    assert codes == [0, *[grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]] * 2], reply
    first = check_message(reply.responses[1].status.message, disk_server, detail_in_log="No space left")
    assert reply.responses[2].status.message == reply.responses[1].status.message  # one failure, one log line
    assert first in reply.responses[2].status.message

    details = refused(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        lambda: client.update_action_result(digest(os.urandom(8)), result),
    )
    check_message(details, disk_server, detail_in_log="No space left on device")
    details = refused(grpc.StatusCode.RESOURCE_EXHAUSTED, lambda: client.write(os.urandom(50 * KIB)))
    check_message(details, disk_server, detail_in_log="No space left on device")

    # Nothing stored was lost or half-written, and reads keep working.
    assert staged_files(disk) == []
    assert client.missing(*map(digest, new)) == list(map(digest, new))
    assert client.read(digest(kept)) == kept
    assert client.get_action_result(action).output_files[0].digest == result.output_files[0].digest

    # Once there is room again, the same writes succeed.
    free_the_disk(disk)
    assert [r.status.code for r in client.upload(*new).responses] == [0, 0]
    assert client.write(big) == len(big)
    assert client.read(digest(big)) == big


def test_read_only_storage_refuses_writes_as_unavailable_and_keeps_serving_reads(
    disk: Path, disk_server: ReapiServer, acme: Persona
) -> None:
    client = Client(disk_server.channel(), acme.pat())
    kept = [os.urandom(4 * KIB), os.urandom(300 * KIB)]
    assert [r.status.code for r in client.upload(kept[0]).responses] == [0]
    assert client.write(kept[1]) == len(kept[1])
    action, result = action_with_outputs(client, *kept)
    client.update_action_result(action, result)

    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)

    details = refused(grpc.StatusCode.UNAVAILABLE, lambda: client.write(os.urandom(100 * KIB)))
    assert details.startswith("storage is unavailable"), details
    check_message(details, disk_server, detail_in_log="Read-only file system")
    new = os.urandom(2 * KIB)
    reply = client.upload(kept[0], new)
    assert [r.status.code for r in reply.responses] == [0, grpc.StatusCode.UNAVAILABLE.value[0]]
    check_message(reply.responses[1].status.message, disk_server, detail_in_log="Read-only file system")
    details = refused(
        grpc.StatusCode.UNAVAILABLE, lambda: client.update_action_result(digest(os.urandom(8)), result)
    )
    check_message(details, disk_server, detail_in_log="Read-only file system")
    assert client.missing(digest(new)) == [digest(new)]

    # Every read works, in this process and in one that starts on the read-only storage and
    # so has to look at the disk for everything.
    with ReapiServer("external", env={"REAPI_STORAGE_EXTERNAL": f"file://{disk}"}) as cold:
        for reader in (client, Client(cold.channel(), client.token)):
            assert reader.missing(*map(digest, kept)) == []
            assert [r.data for r in reader.batch_read(*map(digest, kept)).responses] == kept
            assert reader.read(digest(kept[1]), offset=1000, limit=5000) == kept[1][1000:6000]
            assert reader.get_action_result(action).output_files[1].digest == digest(kept[1])


@pytest.fixture
def seaweed(tmp_path: Path) -> Iterator[SeaweedS3]:
    with SeaweedS3(tmp_path / "seaweed") as server:
        yield server


def test_an_unreachable_bucket_refuses_writes_as_unavailable(seaweed: SeaweedS3, acme: Persona) -> None:
    url = seaweed.url(f"f{uuid.uuid4().hex[:8]}")
    with ReapiServer("external", env={"REAPI_STORAGE_EXTERNAL": url}) as server:
        client = Client(server.channel(), acme.pat())
        kept = os.urandom(3 * KIB)
        assert client.upload(kept).responses[0].status.code == 0
        action, result = action_with_outputs(client, os.urandom(KIB))
        client.update_action_result(action, result)

        seaweed.stop()

        details = refused(grpc.StatusCode.UNAVAILABLE, lambda: client.write(os.urandom(100 * KIB)))
        assert details.startswith("storage is unavailable"), details
        check_message(details, server, detail_in_log="Could not connect to the endpoint URL")
        assert f":{seaweed.port}" not in details
        new = os.urandom(2 * KIB)
        reply = client.upload(kept, new, os.urandom(KIB))
        codes = [r.status.code for r in reply.responses]
        assert codes == [0, *[grpc.StatusCode.UNAVAILABLE.value[0]] * 2], reply
        check_message(reply.responses[1].status.message, server, detail_in_log="Could not connect")
        details = refused(
            grpc.StatusCode.UNAVAILABLE, lambda: client.update_action_result(digest(os.urandom(8)), result)
        )
        check_message(details, server, detail_in_log="Could not connect")
        # Reads need the bucket too: the same clear answer, never an exception's text.
        details = refused(grpc.StatusCode.UNAVAILABLE, lambda: client.read(digest(kept)))
        check_message(details, server, detail_in_log="Could not connect")
        details = refused(grpc.StatusCode.UNAVAILABLE, lambda: client.get_action_result(action))
        check_message(details, server, detail_in_log="Could not connect")

        # The presence index (in the database) still answers, and holds nothing unstored.
        assert client.missing(digest(kept), digest(new)) == [digest(new)]
        assert not Blob.objects.filter(tenant=acme.slug, key__endswith=digest(new).hash).exists()


def test_a_bucket_that_refuses_requests_is_unavailable(seaweed: SeaweedS3, acme: Persona) -> None:
    # A bucket these credentials may not write (SeaweedFS answers AccessDenied): an S3 error
    # reply rather than no reply at all.
    url = seaweed.url("denied").replace(seaweed.bucket, f"not-{seaweed.bucket}")
    with ReapiServer("external", env={"REAPI_STORAGE_EXTERNAL": url}) as server:
        client = Client(server.channel(), acme.pat())
        details = refused(grpc.StatusCode.UNAVAILABLE, lambda: client.write(os.urandom(20 * KIB)))
        check_message(details, server, detail_in_log="AccessDenied")
        reply = client.upload(os.urandom(KIB), os.urandom(KIB))
        assert [r.status.code for r in reply.responses] == [grpc.StatusCode.UNAVAILABLE.value[0]] * 2
        check_message(reply.responses[0].status.message, server, detail_in_log="AccessDenied")
        details = refused(
            grpc.StatusCode.UNAVAILABLE,
            lambda: client.update_action_result(digest(os.urandom(8)), re_pb2.ActionResult(exit_code=0)),
        )
        check_message(details, server, detail_in_log="AccessDenied")


def test_an_unforeseen_failure_is_internal_with_a_request_id_and_its_text_only_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The edge's catch-all (reapi.grpc_edge) hands every exception that is not a ReapiError
    # to this function; storage faults are covered over the socket above.
    with caplog.at_level(logging.ERROR, logger="reapi.faults"):
        err = faults.as_error(KeyError("/srv/secret/path"), "Write into FileBlobStore(/srv/blobs)")
    assert isinstance(err, Internal)
    found = REQUEST_ID.search(err.message)
    assert found, err.message
    assert err.message == f"the server failed on this request (request {found.group(1)})"
    logged = [r for r in caplog.records if f"request {found.group(1)}" in r.getMessage()]
    assert len(logged) == 1 and "/srv/secret/path" in logged[0].getMessage()
