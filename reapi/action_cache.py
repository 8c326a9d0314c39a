"""The action cache of one store: ActionResults keyed by the Action digest.

An entry is served only while every blob it references is in the CAS (completeness
checking): REAPI v2 says GetActionResult SHOULD ensure referenced blobs are available, and
Bazel with --remote_download_minimal trusts a hit without fetching its outputs, so a hit with
a missing output would fail the build later. A dangling entry is a miss instead.

An entry is as hostile as a request (reapi.messages): its digests, paths and Trees are checked
when it is stored and again when it is read, since an older server may have stored it and its
Trees may arrive after it. One unfit to serve (a digest that is not a SHA-256, a Tree that does
not parse, more entries than REAPI_MAX_RESULT_ENTRIES) is a miss and is dropped, logged; none
of its digests ever becomes a storage key.

Each entry is stored behind a header saying which cluster wrote it and, for a workstation's
result, who (reapi.ac_entries); a read is served only what the reader's tenant lets its cluster
take (`threshold`), decided from that header in the object already read.
"""

import logging
import threading
from collections.abc import Callable

from reapi import ac_entries, digests, messages
from reapi.ac_entries import Author, Entry
from reapi.blobstore import BlobStore
from reapi.cas import Cas
from reapi.digests import Digest
from reapi.errors import InvalidArgument, NotFound
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

log = logging.getLogger(__name__)

INLINE_LIMIT = 1024 * 1024
# The checks of messages.check_result, remembered per process by the stored bytes they were
# made on: a hit re-read (Bazel asks for every action of every build) is checked once, not on
# every read (a fifth of a GetActionResult's Python work). Keyed by the bytes themselves, so a
# memo can only ever answer for exactly what it checked; bounded in entries and in key size.
CHECKED_ENTRIES = 4096
CHECKED_MAX_BYTES = 8 * 1024


# Who wrote a legacy entry (stored before entries carried their origin), from its provenance;
# None when nothing says (reapi.provenance.legacy_author).
LegacyAuthor = Callable[[str, Digest], Author | None]
# Told when CI's result replaces a different one a workstation wrote: (theirs, their result, CI's).
OnConflict = Callable[[Entry, re_pb2.ActionResult, re_pb2.ActionResult], None]


class ActionCache:
    def __init__(
        self, store: BlobStore, cas: Cas, max_entries: int, legacy_author: LegacyAuthor | None = None
    ) -> None:
        self.store = store
        self.cas = cas
        # REAPI_MAX_RESULT_ENTRIES: see reapi.messages.Budget.
        self.max_entries = max_entries
        self.legacy_author = legacy_author
        # payload -> (its references, the entries and tree bytes they spent of a Budget)
        self._checked: dict[bytes, tuple[messages.References, int, int]] = {}
        self._checked_lock = threading.Lock()

    def get(
        self,
        tenant: str,
        action: Digest,
        inline_stdout: bool = False,
        inline_stderr: bool = False,
        inline_files: frozenset[str] = frozenset(),
        threshold: int = 0,
    ) -> re_pb2.ActionResult:
        """The result stored for `action`, if the reader may be served it: `threshold` is how
        many distinct workstation users must have written a workstation's result
        (Principal.ci_threshold; 0 takes every entry). One storage read either way."""
        key = digests.ac_key(tenant, action)
        data = self.store.get(key)
        if data is None:
            raise NotFound(f"no action result for {action}")
        try:
            if not ac_entries.is_legacy(data):
                payload = ac_entries.payload_for(data, threshold)
            elif threshold:
                entry = self._legacy(key, tenant, action, data)
                payload = entry.payload if entry.accepted(threshold) else None
            else:
                payload = data
        except ValueError:
            self._drop(key, data, "its header is cut short")
            raise NotFound(f"the action result for {action} was unusable and is dropped") from None
        if payload is None:
            raise NotFound(
                f"the action result for {action} was written by a workstation, and this tenant's "
                "CI does not take it (yet)"
            )
        try:
            result = messages.parse_result(payload)
            missing = self.missing_blobs(tenant, result, payload)
        except InvalidArgument as exc:
            # Stored by an older server, or its Tree uploaded after it: never served, and
            # none of its digests reached storage unchecked.
            self._drop(key, data, exc.message)
            raise NotFound(
                f"the action result for {action} was unusable and is dropped: {exc.message}"
            ) from None
        if missing:
            raise NotFound(f"action result for {action} references blobs no longer in the CAS: {missing[0]}")
        self._inline(tenant, result, inline_stdout, inline_stderr, inline_files)
        return result

    def missing_blobs(self, tenant: str, result: re_pb2.ActionResult, payload: bytes = b"") -> list[Digest]:
        """The blobs `result` names that the CAS lacks; InvalidArgument if it is unfit to serve.
        `payload`: the bytes `result` was parsed from, when it was read from storage.

        Everything is checked before storage sees a key, and the work is bounded by the
        entry limit: two batched lookups, the outputs, then the files of output trees.
        """
        budget = messages.Budget(self.max_entries)
        refs = self._check(result, budget, payload)
        missing = self._missing(tenant, refs.blobs)
        absent = set(missing)
        tree_files = []
        for field, tree_digest in refs.trees:
            if tree_digest in absent:
                continue
            tree = self._tree(tenant, field, tree_digest)
            if tree is None:  # gone since the lookup
                missing.append(tree_digest)
                continue
            tree_files += messages.check_tree(tree, field, budget)
        if tree_files:
            missing += self._missing(tenant, tree_files)
        return missing

    def _check(
        self, result: re_pb2.ActionResult, budget: messages.Budget, payload: bytes
    ) -> messages.References:
        """messages.check_result, or what it found for these same bytes before (CHECKED_ENTRIES)."""
        known = self._checked.get(payload) if payload else None
        if known is not None:
            refs, budget.entries, budget.tree_bytes = known
            return refs
        refs = messages.check_result(result, budget)
        if payload and len(payload) <= CHECKED_MAX_BYTES:
            with self._checked_lock:
                if len(self._checked) >= CHECKED_ENTRIES:
                    del self._checked[next(iter(self._checked))]  # the oldest
                self._checked[payload] = (refs, budget.entries, budget.tree_bytes)
        return refs

    def _tree(self, tenant: str, field: str, digest: Digest) -> re_pb2.Tree | None:
        """The Tree under `digest` (its size already spent from the result's budget), or None
        if the CAS lacks it."""
        try:
            data = self.cas.get(tenant, digest)
        except NotFound:
            return None
        return messages.parse_tree(data, field, digest)

    def _drop(self, key: str, data: bytes, reason: str) -> None:
        log.warning("action cache entry %s is unusable and is dropped: %s", key, reason)
        # Only the entry that was read: one an UpdateActionResult stored since then stays.
        if self.store.get(key) == data:
            self.store.delete(key)

    def _missing(self, tenant: str, wanted: list[Digest]) -> list[Digest]:
        """Cas.find_missing, except that an indexed store checks storage itself (verify): a
        hit promises its outputs can be fetched, and an index may list a blob storage lost.
        What this process saw within the presence trust window is not asked again."""
        return self.cas.find_missing(tenant, wanted, verify=True)

    def _inline(
        self,
        tenant: str,
        result: re_pb2.ActionResult,
        inline_stdout: bool,
        inline_stderr: bool,
        inline_files: frozenset[str],
    ) -> None:
        # REAPI: the server MAY omit inlining and MUST when the response would grow too large.
        budget = INLINE_LIMIT
        if inline_stdout and result.HasField("stdout_digest") and result.stdout_digest.size_bytes <= budget:
            result.stdout_raw = self.cas.get(
                tenant, digests.check_field(result.stdout_digest, "stdout_digest")
            )
            budget -= len(result.stdout_raw)
        if inline_stderr and result.HasField("stderr_digest") and result.stderr_digest.size_bytes <= budget:
            result.stderr_raw = self.cas.get(
                tenant, digests.check_field(result.stderr_digest, "stderr_digest")
            )
            budget -= len(result.stderr_raw)
        for i, f in enumerate(result.output_files):
            if f.path in inline_files and f.digest.size_bytes <= budget:
                f.contents = self.cas.get(tenant, digests.check_field(f.digest, f"output_files[{i}].digest"))
                budget -= len(f.contents)

    def put(
        self,
        tenant: str,
        action: Digest,
        result: re_pb2.ActionResult,
        record: Callable[[], None] | None = None,
        author: Author | None = None,
        on_conflict: OnConflict | None = None,
    ) -> re_pb2.ActionResult:
        """Store `result`; `record` (provenance) runs once it is valid, before it is visible.

        Its Trees already in the CAS are checked now (Bazel uploads outputs first); one that
        arrives later is checked when the entry is read (get).

        `author` (default: written through the internal cluster) decides the entry's header
        (reapi.ac_entries). A workstation's result identical to the workstation result stored
        adds its user's vote; one beside a servable CI result is not stored (CI's stays and
        serves the workstation too); otherwise it replaces what was there. CI's result always
        replaces what was there; if that was a different workstation result, `on_conflict`
        hears of it once CI's is stored.
        """
        budget = messages.Budget(self.max_entries)
        refs = messages.check_result(result, budget)
        for field, tree_digest in refs.trees:
            tree = self._tree(tenant, field, tree_digest)
            if tree is not None:
                messages.check_tree(tree, field, budget)
        payload = result.SerializeToString(deterministic=True)
        author = author or Author(external=False)
        key = digests.ac_key(tenant, action)
        existing = self._stored(key)
        conflict = None
        if author.external:
            voters: tuple[ac_entries.Voter, ...] = (author.voter,)
            if (
                existing is not None
                and existing[0].origin == ac_entries.INTERNAL
                and self._servable(tenant, existing[1])
            ):
                return result
            if (
                existing is not None
                and existing[0].origin == ac_entries.EXTERNAL
                and existing[1] is not None
                and ac_entries.fingerprint(existing[1]) == ac_entries.fingerprint(result)
            ):
                voters = ac_entries.with_voter(existing[0].voters, author)
            data = ac_entries.encode(ac_entries.EXTERNAL, voters, payload)
        else:
            if (
                on_conflict is not None
                and existing is not None
                and existing[0].origin == ac_entries.EXTERNAL
                and existing[1] is not None
                and ac_entries.fingerprint(existing[1]) != ac_entries.fingerprint(result)
            ):
                conflict = (existing[0], existing[1])
            data = ac_entries.encode(ac_entries.INTERNAL, (), payload)
        self.cas.quota.admit(tenant, len(data))
        if record is not None:
            # First the record of who wrote it, then the entry: no entry is ever visible
            # without it, so a purge of the writer's token cannot miss one.
            record()
        self.store.put(key, data)
        if conflict is not None and on_conflict is not None:
            on_conflict(conflict[0], conflict[1], result)
        return result

    def _stored(self, key: str) -> tuple[Entry, re_pb2.ActionResult | None] | None:
        """The versioned entry under `key` and its result (None if it does not parse); None
        when there is none, or only a legacy entry (whose writer a write does not look up).
        A storage that cannot be read counts as none: a write fails only where the put does."""
        try:
            data = self.store.get(key)
        except Exception:
            log.warning("could not read action cache entry %s before replacing it", key, exc_info=True)
            return None
        entry = None if data is None else ac_entries.decode(data)
        if entry is None:
            return None
        try:
            return entry, messages.parse_result(entry.payload)
        except InvalidArgument:
            return entry, None

    def _servable(self, tenant: str, result: re_pb2.ActionResult | None) -> bool:
        if result is None:
            return False
        try:
            return not self.missing_blobs(tenant, result)
        except InvalidArgument:
            return False

    def _legacy(self, key: str, tenant: str, action: Digest, data: bytes) -> Entry:
        """A legacy entry (a bare ActionResult) as an entry with its origin, from its provenance:
        one database query, then the entry is rewritten with its header so no later read asks
        again. Nothing known of its writer: a workstation's with no votes."""
        try:
            author = self.legacy_author(tenant, action) if self.legacy_author else None
        except Exception:
            # Unknown for now: not served to a reader that needs to know, asked again next time.
            log.warning("could not look up who wrote the older action cache entry %s", key, exc_info=True)
            return Entry(ac_entries.EXTERNAL, (), 0.0, data)
        if author is not None and not author.external:
            entry = Entry(ac_entries.INTERNAL, (), 0.0, data)
        else:
            entry = Entry(ac_entries.EXTERNAL, (author.voter,) if author else (), 0.0, data)
        # Only the entry that was read: one an UpdateActionResult stored since then stays. Best
        # effort: a read of read-only or full storage still answers, and asks again next time.
        try:
            if self.store.get(key) == data:
                self.store.put(key, ac_entries.encode(entry.origin, entry.voters, data, entry.written_at))
        except Exception:
            log.warning("could not give the older action cache entry %s its header", key, exc_info=True)
        return entry

    def delete(self, tenant: str, action: Digest) -> None:
        self.store.delete(digests.ac_key(tenant, action))

    def withdraw(self, tenant: str, action: Digest, token_id: int) -> bool:
        """Take a token's vote off the workstation result stored for `action` (a purge): the
        entry goes when no vote is left. True if the entry changed."""
        key = digests.ac_key(tenant, action)
        data = self.store.get(key)
        entry = None if data is None else ac_entries.decode(data)
        if entry is None or entry.origin != ac_entries.EXTERNAL:
            return False
        voters = ac_entries.without_token(entry.voters, token_id)
        if voters == entry.voters:
            return False
        if voters:
            self.store.put(key, ac_entries.encode(entry.origin, voters, entry.payload, entry.written_at))
        else:
            self.store.delete(key)
        return True
