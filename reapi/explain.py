"""Why an action missed the cache: its nearest earlier relative in the tenant, and what differs.

A miss's Action (and its Command) usually reaches the CAS with the result, in cache-only mode as
with remote execution; the input tree's Directory messages only when the action ran remotely.
The relative is the most recent earlier miss of the same tenant whose Command has the same
output paths, preferably with the same target and from the other cluster (CI's, for a
workstation's miss). The difference is said as a person reads it: arguments, environment
variables, platform properties, output paths, and input files where both input trees are
stored. Computed on first view and kept on the InvocationMiss.

Bounded: an Action or Command above MAX_MESSAGE_BYTES is not read; at most FILL_LIMIT earlier
misses (and FILL_SECONDS) have their output paths looked up per explanation, and a miss whose
Action is still absent after GIVE_UP_AFTER is not looked up again; the input trees are walked
by directory digest, skipping equal subtrees, and stop after MAX_DIRECTORIES directories or
MAX_CHANGES listed changes. One view's explaining is bounded by reapi.invocation_queries.
"""

import difflib
import hashlib
import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.utils import timezone

from reapi import clusters, digests
from reapi.digests import Digest
from reapi.errors import ReapiError
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from reapi.models import InvocationMiss

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 1024 * 1024
FILL_LIMIT = 2000
FILL_SECONDS = 1.0  # looking up earlier misses' outputs stops here (S3 reads take ~20 ms each)
# A miss whose Action is still not in the CAS this long after is taken as never to come.
GIVE_UP_AFTER = timedelta(hours=1)
UNKNOWN = "-"
MAX_DIRECTORIES = 20_000
MAX_CHANGES = 200
SHOWN_CHARS = 300

EXPLAINED, NO_RELATIVE, ACTION_MISSING = "explained", "no-relative", "action-missing"
INPUTS_NOT_STORED = "inputs differ; the input trees are not stored"


@dataclass
class Loaded:
    action: re_pb2.Action
    command: re_pb2.Command

    @property
    def outputs(self) -> list[str]:
        paths = list(self.command.output_paths) or [
            *self.command.output_files,
            *self.command.output_directories,
        ]
        return sorted(paths)


def digest_text(d: re_pb2.Digest | Digest) -> str:
    size = d.size_bytes if isinstance(d, re_pb2.Digest) else d.size
    return f"{d.hash}/{size}"


def shown(text: str) -> str:
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"


def _blob(backend: clusters.Backend, tenant: str, d: re_pb2.Digest) -> bytes | None:
    if d.size_bytes > MAX_MESSAGE_BYTES:
        return None
    try:
        return backend.cas.get(tenant, digests.check_field(d, "digest"))
    except ReapiError:  # not in the CAS, or a digest that is no digest
        return None


def load(storage: str, tenant: str, action_hash: str, action_size: int) -> Loaded | None:
    """The Action and Command behind a digest, or None when either is absent or unusable."""
    backend = clusters.backend(storage)
    data = _blob(backend, tenant, re_pb2.Digest(hash=action_hash, size_bytes=action_size))
    if data is None:
        return None
    try:
        action = re_pb2.Action.FromString(data)
        command_data = _blob(backend, tenant, action.command_digest)
        if command_data is None:
            return None
        return Loaded(action, re_pb2.Command.FromString(command_data))
    except Exception:
        return None  # not an Action: the client's bytes, not ours to explain


def outputs_key(outputs: list[str]) -> str:
    return hashlib.sha256("\0".join(outputs).encode()).hexdigest()


def note_outputs(miss: InvocationMiss, loaded: Loaded | None = None) -> Loaded | None:
    """Fill in the miss's output paths once its Action is in the CAS."""
    if loaded is None:
        loaded = load(miss.storage, miss.tenant.slug, miss.action_hash, miss.action_size)
    if loaded is None:
        if not miss.outputs_key and miss.missed_at < timezone.now() - GIVE_UP_AFTER:
            miss.outputs_key = UNKNOWN  # never looked up again as a candidate
            miss.save(update_fields=["outputs_key"])
        return None
    outputs = loaded.outputs
    miss.outputs = [shown(p) for p in outputs[:100]]
    miss.outputs_key = outputs_key(outputs)
    miss.save(update_fields=["outputs", "outputs_key"])
    return loaded


def find_relative(miss: InvocationMiss) -> InvocationMiss | None:
    earlier = (
        InvocationMiss.objects.filter(tenant_id=miss.tenant_id, missed_at__lt=miss.missed_at)
        .exclude(invocation_id=miss.invocation_id)
        .exclude(action_hash=miss.action_hash)
    )
    unknown = earlier.filter(outputs_key="").select_related("tenant").order_by("-missed_at")
    deadline = time.monotonic() + FILL_SECONDS
    for candidate in unknown[:FILL_LIMIT]:
        if time.monotonic() > deadline:
            break
        note_outputs(candidate)
    same = list(
        earlier.filter(outputs_key=miss.outputs_key).select_related("invocation").order_by("-missed_at")[:50]
    )
    if not same:
        return None

    def rank(other: InvocationMiss) -> tuple[bool, bool, float]:
        same_target = bool(miss.target_id) and other.target_id == miss.target_id
        other_cluster = other.cluster != miss.cluster
        return same_target, other_cluster, other.missed_at.timestamp()

    return max(same, key=rank)


def explain(miss: InvocationMiss) -> dict[str, Any]:
    """The miss's explanation, computed on first call and then kept (unless its Action is not
    yet in the CAS: then asked again next time)."""
    if miss.explanation:
        return dict(miss.explanation)
    loaded = note_outputs(miss)
    if loaded is None:
        return {"state": ACTION_MISSING, "changes": [], "text": "the Action is not (yet) in the CAS"}
    relative = find_relative(miss)
    if relative is None:
        found: dict[str, Any] = {
            "state": NO_RELATIVE,
            "changes": [],
            "text": "no earlier action with these outputs",
        }
    else:
        other = load(relative.storage, miss.tenant.slug, relative.action_hash, relative.action_size)
        if other is None:
            return {"state": ACTION_MISSING, "changes": [], "text": "the earlier action is no longer stored"}
        backend = clusters.backend(miss.storage)
        changes = compare(other, loaded, backend, clusters.backend(relative.storage), miss.tenant.slug)
        found = {
            "state": EXPLAINED,
            "relative": {
                "action": f"{relative.action_hash}/{relative.action_size}",
                "invocation": relative.invocation.invocation_id,
                "cluster": relative.cluster,
                "user": relative.invocation.username,
                "at": relative.missed_at.isoformat(),
            },
            "changes": changes,
            "text": f"compared with {relative.action_hash[:12]}… of invocation "
            f"{relative.invocation.invocation_id} ({relative.cluster})",
        }
    miss.explanation = found
    miss.save(update_fields=["explanation"])
    return found


def _change(kind: str, text: str) -> dict[str, str]:
    return {"kind": kind, "text": text}


def compare(
    old: Loaded, new: Loaded, new_backend: clusters.Backend, old_backend: clusters.Backend, tenant: str
) -> list[dict[str, str]]:
    changes = [
        *_arguments(list(old.command.arguments), list(new.command.arguments)),
        *_pairs("environment variable", _env(old.command), _env(new.command)),
        *_pairs("platform property", _platform(old), _platform(new)),
    ]
    old_out, new_out = set(old.outputs), set(new.outputs)
    changes += [_change("output", f"output added: {shown(p)}") for p in sorted(new_out - old_out)]
    changes += [_change("output", f"output removed: {shown(p)}") for p in sorted(old_out - new_out)]
    if old.command.working_directory != new.command.working_directory:
        changes.append(_change("command", "working directory changed"))
    if old.action.input_root_digest != new.action.input_root_digest:
        changes += _inputs(
            old.action.input_root_digest, new.action.input_root_digest, old_backend, new_backend, tenant
        )
    for name in ("timeout", "do_not_cache", "salt"):
        if getattr(old.action, name) != getattr(new.action, name):
            changes.append(_change("action", f"the Action's {name} changed"))
    if not changes:
        changes.append(_change("action", "the Actions differ only in fields this server does not compare"))
    return changes[:MAX_CHANGES]


def _arguments(old: list[str], new: list[str]) -> list[dict[str, str]]:
    changes = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes():
        if op == "equal":
            continue
        if op == "replace" and i2 - i1 == j2 - j1:
            for k in range(i2 - i1):
                changes.append(
                    _change(
                        "argument", f"argument {j1 + k} changed: {shown(old[i1 + k])} → {shown(new[j1 + k])}"
                    )
                )
            continue
        changes += [_change("argument", f"argument removed: {shown(a)}") for a in old[i1:i2]]
        changes += [_change("argument", f"argument added: {shown(a)}") for a in new[j1:j2]]
    return changes


def _env(command: re_pb2.Command) -> dict[str, str]:
    return {v.name: v.value for v in command.environment_variables}


def _platform(loaded: Loaded) -> dict[str, str]:
    # REAPI v2.2 moved the platform from the Command to the Action; clients send either.
    props = {p.name: p.value for p in loaded.command.platform.properties}
    props.update({p.name: p.value for p in loaded.action.platform.properties})
    return props


def _pairs(what: str, old: dict[str, str], new: dict[str, str]) -> list[dict[str, str]]:
    kind = what.split()[0]
    changes = []
    for name in sorted(old.keys() | new.keys()):
        if name not in old:
            changes.append(_change(kind, f"{what} {shown(name)} added: {shown(new[name])}"))
        elif name not in new:
            changes.append(_change(kind, f"{what} {shown(name)} removed (was {shown(old[name])})"))
        elif old[name] != new[name]:
            changes.append(
                _change(kind, f"{what} {shown(name)} changed: {shown(old[name])} → {shown(new[name])}")
            )
    return changes


class TreeMissing(Exception):
    pass


@dataclass
class Walk:
    old_backend: clusters.Backend
    new_backend: clusters.Backend
    tenant: str
    directories: int = 0
    changes: list[dict[str, str]] = field(default_factory=list)
    truncated: bool = False

    def directory(self, backend: clusters.Backend, d: re_pb2.Digest) -> re_pb2.Directory:
        self.directories += 1
        if self.directories > MAX_DIRECTORIES:
            self.truncated = True
            raise TreeMissing
        data = _blob(backend, self.tenant, d)
        if data is None:
            raise TreeMissing
        try:
            return re_pb2.Directory.FromString(data)
        except Exception:
            raise TreeMissing from None

    def add(self, text: str) -> None:
        if len(self.changes) >= MAX_CHANGES:
            self.truncated = True
            return
        self.changes.append(_change("input", text))

    def diff(self, prefix: str, old_d: re_pb2.Digest, new_d: re_pb2.Digest) -> None:
        if old_d == new_d or self.truncated:
            return  # equal subtrees are equal all the way down: never opened
        old, new = self.directory(self.old_backend, old_d), self.directory(self.new_backend, new_d)
        old_files = {f.name: f for f in old.files}
        new_files = {f.name: f for f in new.files}
        for name in sorted(old_files.keys() | new_files.keys()):
            path = shown(prefix + name)
            a, b = old_files.get(name), new_files.get(name)
            if a is None and b is not None:
                self.add(f"input file added: {path} ({digest_text(b.digest)})")
            elif b is None and a is not None:
                self.add(f"input file removed: {path} (was {digest_text(a.digest)})")
            elif a is not None and b is not None and a.digest != b.digest:
                self.add(f"input file changed: {path}: {digest_text(a.digest)} → {digest_text(b.digest)}")
            elif a is not None and b is not None and a.is_executable != b.is_executable:
                self.add(f"input file {path}: executable bit changed")
        old_links = {s.name: s.target for s in old.symlinks}
        new_links = {s.name: s.target for s in new.symlinks}
        for name in sorted(old_links.keys() | new_links.keys()):
            if old_links.get(name) != new_links.get(name):
                self.add(
                    f"input symlink {shown(prefix + name)}: {old_links.get(name)} → {new_links.get(name)}"
                )
        old_dirs = {d.name: d.digest for d in old.directories}
        new_dirs = {d.name: d.digest for d in new.directories}
        for name in sorted(old_dirs.keys() | new_dirs.keys()):
            path = shown(prefix + name) + "/"
            if name not in old_dirs:
                self.add(f"input directory added: {path}")
            elif name not in new_dirs:
                self.add(f"input directory removed: {path}")
            else:
                self.diff(prefix + name + "/", old_dirs[name], new_dirs[name])


def _inputs(
    old_root: re_pb2.Digest,
    new_root: re_pb2.Digest,
    old_backend: clusters.Backend,
    new_backend: clusters.Backend,
    tenant: str,
) -> list[dict[str, str]]:
    walk = Walk(old_backend, new_backend, tenant)
    try:
        walk.diff("", old_root, new_root)
    except TreeMissing:
        if not walk.truncated:
            return [_change("inputs", INPUTS_NOT_STORED)]
    if walk.truncated:
        walk.changes.append(_change("inputs", "… and more input differences (not listed)"))
    if not walk.changes:
        return [_change("inputs", "the input trees differ only in node properties")]
    return walk.changes
