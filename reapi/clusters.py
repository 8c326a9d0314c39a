"""Which store serves a call: one CAS and action cache per storage alias, chosen by cluster
and the tenant's cache mode.

Cache modes (docs/architecture.md, README): in `independent` each cluster keeps to its own storage; in
`pass-through` the external cluster uses the internal cluster's storage, so CI's entries are
hits for workstations at once and the other way round. The mode comes with the credential,
re-read from the database every REAPI_CREDENTIAL_TTL_SECONDS, so a switch reaches running
servers within seconds and loses nothing: each storage is left as it was.

Within the internal storage, what the internal cluster is served of workstations' results is
the tenant's `ci_accepts` setting, decided per entry as it is read (reapi.ac_entries).
"""

import functools
import threading
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core.files.storage import storages

from reapi.action_cache import ActionCache
from reapi.blobstore import BlobStore, FileBlobStore
from reapi.cas import Cas
from reapi.filestorage import BlobFileSystemStorage
from reapi.quotas import Gate


@dataclass(frozen=True)
class Backend:
    alias: str
    store: BlobStore
    cas: Cas
    action_cache: ActionCache


_backends: dict[str, Backend] = {}
_lock = threading.Lock()


def max_batch_bytes() -> int:
    # REAPI: advertise max_batch_total_size_bytes below the receive limit in force, leaving
    # room for the digests and framing around the data.
    return settings.REAPI_MAX_MESSAGE_BYTES - 64 * 1024


def make_store(alias: str) -> BlobStore:
    storage = storages[alias]
    if isinstance(storage, BlobFileSystemStorage):
        return FileBlobStore(Path(storage.location))
    from reapi.s3store import S3BlobStore

    return S3BlobStore(storage, alias)


def backend(alias: str) -> Backend:
    found = _backends.get(alias)
    if found is not None:
        return found
    with _lock:
        if alias not in _backends:
            store = make_store(alias)
            from reapi import provenance  # it reaches the database models

            cas = Cas(store, max_batch_bytes(), quota=Gate(alias.removeprefix("reapi-")))
            action_cache = ActionCache(
                store,
                cas,
                settings.REAPI_MAX_RESULT_ENTRIES,
                legacy_author=functools.partial(provenance.legacy_author, alias),
            )
            _backends[alias] = Backend(alias, store, cas, action_cache)
        return _backends[alias]


def storage_alias(cluster: str, cache_mode: str) -> str:
    if cluster == "external" and cache_mode == "pass-through":
        return "reapi-internal"
    return f"reapi-{cluster}"


def for_call(cluster: str, cache_mode: str) -> Backend:
    return backend(storage_alias(cluster, cache_mode))


def reset() -> None:
    """Forget every backend (tests that change storage settings)."""
    with _lock:
        _backends.clear()
