"""The action cache of one store: ActionResults keyed by the Action digest.

An entry is served only while every blob it references is in the CAS (completeness
checking): REAPI v2 says GetActionResult SHOULD ensure referenced blobs are available, and
Bazel with --remote_download_minimal trusts a hit without fetching its outputs, so a hit with
a missing output would fail the build later. A dangling entry is a miss instead.
"""

from collections.abc import Callable

from reapi import digests
from reapi.blobstore import BlobStore
from reapi.cas import Cas
from reapi.digests import Digest
from reapi.errors import InvalidArgument, NotFound
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

INLINE_LIMIT = 1024 * 1024


def referenced_digests(result: re_pb2.ActionResult) -> list[re_pb2.Digest]:
    refs = [f.digest for f in result.output_files]
    refs += [d.tree_digest for d in result.output_directories]
    if result.HasField("stdout_digest"):
        refs.append(result.stdout_digest)
    if result.HasField("stderr_digest"):
        refs.append(result.stderr_digest)
    return refs


def _checked(d: re_pb2.Digest, what: str) -> Digest:
    try:
        return digests.check(d.hash, d.size_bytes)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{what}: {exc.message}") from None


class ActionCache:
    def __init__(self, store: BlobStore, cas: Cas) -> None:
        self.store = store
        self.cas = cas

    def get(
        self,
        tenant: str,
        action: Digest,
        inline_stdout: bool = False,
        inline_stderr: bool = False,
        inline_files: frozenset[str] = frozenset(),
    ) -> re_pb2.ActionResult:
        data = self.store.get(digests.ac_key(tenant, action))
        if data is None:
            raise NotFound(f"no action result for {action}")
        result = re_pb2.ActionResult()
        result.ParseFromString(data)
        missing = self.missing_blobs(tenant, result)
        if missing:
            raise NotFound(f"action result for {action} references blobs no longer in the CAS: {missing[0]}")
        self._inline(tenant, result, inline_stdout, inline_stderr, inline_files)
        return result

    def missing_blobs(self, tenant: str, result: re_pb2.ActionResult) -> list[Digest]:
        # Two batched lookups: the outputs, then the files of output trees.
        missing = self._missing(tenant, [Digest(r.hash, r.size_bytes) for r in referenced_digests(result)])
        tree_files = []
        for out_dir in result.output_directories:
            tree_digest = Digest(out_dir.tree_digest.hash, out_dir.tree_digest.size_bytes)
            if tree_digest in missing:
                continue
            tree = re_pb2.Tree()
            tree.ParseFromString(self.cas.get(tenant, tree_digest))
            for directory in [tree.root, *tree.children]:
                tree_files += [Digest(f.digest.hash, f.digest.size_bytes) for f in directory.files]
        if tree_files:
            missing += self._missing(tenant, tree_files)
        return missing

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
                tenant, Digest(result.stdout_digest.hash, result.stdout_digest.size_bytes)
            )
            budget -= len(result.stdout_raw)
        if inline_stderr and result.HasField("stderr_digest") and result.stderr_digest.size_bytes <= budget:
            result.stderr_raw = self.cas.get(
                tenant, Digest(result.stderr_digest.hash, result.stderr_digest.size_bytes)
            )
            budget -= len(result.stderr_raw)
        for f in result.output_files:
            if f.path in inline_files and f.digest.size_bytes <= budget:
                f.contents = self.cas.get(tenant, Digest(f.digest.hash, f.digest.size_bytes))
                budget -= len(f.contents)

    def put(
        self,
        tenant: str,
        action: Digest,
        result: re_pb2.ActionResult,
        record: Callable[[], None] | None = None,
    ) -> re_pb2.ActionResult:
        """Store `result`; `record` (provenance) runs once it is valid, before it is visible."""
        for ref in referenced_digests(result):
            _checked(ref, "action result")
        for f in result.output_files:
            if not f.path or f.path.startswith("/"):
                raise InvalidArgument(f"output file path {f.path!r} must be relative and not empty")
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
