"""Presence across server processes: what one process stored, another finds at once, even
where it answered "missing" for that directory from a cached listing before."""

import hashlib
import os
import time
from collections.abc import Iterator

import pytest

from tests.support.reapi_client import Client, digest
from tests.support.servers import ReapiServer
from tests.support.tenants import Persona


@pytest.fixture(scope="module")
def second_server() -> Iterator[ReapiServer]:
    # Same DATA_DIR and storage as the session's external server: another process on it.
    with ReapiServer("external") as server:
        yield server


def blobs_in_one_directory(count: int) -> list[bytes]:
    """Blobs whose hashes share their first two hex digits, so their keys share a directory."""
    first = os.urandom(100)
    prefix = hashlib.sha256(first).hexdigest()[:2]
    found = [first]
    while len(found) < count:
        candidate = os.urandom(100)
        if hashlib.sha256(candidate).hexdigest()[:2] == prefix:
            found.append(candidate)
    return found


def test_a_blob_stored_by_another_process_is_found_after_a_listing(
    external_server: ReapiServer, second_server: ReapiServer, acme: Persona
) -> None:
    token = acme.pat()
    writer = Client(external_server.channel(), token)
    reader = Client(second_server.channel(), token)
    stored, later, never = blobs_in_one_directory(3)
    assert writer.upload(stored).responses[0].status.code == 0
    time.sleep(0.3)  # past the window in which a directory listing is not kept
    assert reader.missing(digest(stored), digest(later), digest(never)) == [digest(later), digest(never)]

    assert writer.upload(later).responses[0].status.code == 0
    assert reader.missing(digest(later), digest(never)) == [digest(never)]
    time.sleep(0.3)
    assert reader.missing(digest(later), digest(never)) == [digest(never)]
