"""Helpers shared by the storage tests (S3, cache modes, eviction, provenance, TLS)."""

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from storages.backends.s3 import S3Storage

from portal.storage_urls import storage_from_url
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from reapi.s3store import S3BlobStore
from tests.support.reapi_client import Client, digest

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def s3_store(url: str, alias: str = "reapi-external") -> S3BlobStore:
    """The store a server builds from REAPI_STORAGE_* = `url`, in this process."""
    options = storage_from_url("REAPI_STORAGE_TEST", url, ROOT)["OPTIONS"]
    return S3BlobStore(S3Storage(**options), alias)


def within(seconds: float, probe: Callable[[], T | None], interval: float = 0.1) -> tuple[T, float]:
    """Poll `probe` until it returns something; (that, seconds it took). Fails after `seconds`."""
    start = time.monotonic()
    while True:
        found = probe()
        if found is not None:
            return found, time.monotonic() - start
        if time.monotonic() - start > seconds:
            raise AssertionError(f"not within {seconds}s")
        time.sleep(interval)


def action_with_outputs(client: Client, *outputs: bytes) -> tuple[re_pb2.Digest, re_pb2.ActionResult]:
    """Upload `outputs` and return a fresh action digest and a result referencing them."""
    reply = client.upload(*outputs)
    assert all(r.status.code == 0 for r in reply.responses), reply
    result = re_pb2.ActionResult(
        output_files=[re_pb2.OutputFile(path=f"out/{i}", digest=digest(o)) for i, o in enumerate(outputs)],
        exit_code=0,
    )
    return digest(f"action {uuid.uuid4()}".encode()), result
