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
"""

import logging
from collections.abc import Callable

from reapi import digests, messages
from reapi.blobstore import BlobStore
from reapi.cas import Cas
from reapi.digests import Digest
from reapi.errors import InvalidArgument, NotFound
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

log = logging.getLogger(__name__)

INLINE_LIMIT = 1024 * 1024


class ActionCache:
    def __init__(self, store: BlobStore, cas: Cas, max_entries: int) -> None:
        self.store = store
        self.cas = cas
        # REAPI_MAX_RESULT_ENTRIES: see reapi.messages.Budget.
        self.max_entries = max_entries

    def get(
        self,
        tenant: str,
        action: Digest,
        inline_stdout: bool = False,
        inline_stderr: bool = False,
        inline_files: frozenset[str] = frozenset(),
    ) -> re_pb2.ActionResult:
        key = digests.ac_key(tenant, action)
        data = self.store.get(key)
        if data is None:
            raise NotFound(f"no action result for {action}")
        try:
            result = messages.parse_result(data)
            missing = self.missing_blobs(tenant, result)
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

    def missing_blobs(self, tenant: str, result: re_pb2.ActionResult) -> list[Digest]:
        """The blobs `result` names that the CAS lacks; InvalidArgument if it is unfit to serve.

        Everything is checked before storage sees a key, and the work is bounded by the
        entry limit: two batched lookups, the outputs, then the files of output trees.
        """
        budget = messages.Budget(self.max_entries)
        refs = messages.check_result(result, budget)
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
    ) -> re_pb2.ActionResult:
        """Store `result`; `record` (provenance) runs once it is valid, before it is visible.

        Its Trees already in the CAS are checked now (Bazel uploads outputs first); one that
        arrives later is checked when the entry is read (get).
        """
        budget = messages.Budget(self.max_entries)
        refs = messages.check_result(result, budget)
        for field, tree_digest in refs.trees:
            tree = self._tree(tenant, field, tree_digest)
            if tree is not None:
                messages.check_tree(tree, field, budget)
        data = result.SerializeToString(deterministic=True)
        self.cas.quota.admit(tenant, len(data))
        if record is not None:
            # First the record of who wrote it, then the entry: no entry is ever visible
            # without it, so a purge of the writer's token cannot miss one.
            record()
        self.store.put(digests.ac_key(tenant, action), data)
        return result

    def delete(self, tenant: str, action: Digest) -> None:
        self.store.delete(digests.ac_key(tenant, action))
