"""What the Workers page says of one finished action: what it was (Bazel's target and mnemonic
when the client sent them, else its command line), how it ended, and the end of its stderr.

Everything read from the CAS is read from the action's own tenant's namespace in the storage
it ran against, and bounded: the last STDERR_TAIL_BYTES of stderr, an Action or Command only
when small. Text is returned plain; the templates escape it.
"""

import logging
import re
import shlex
from dataclasses import dataclass
from datetime import timedelta

from google.protobuf.message import DecodeError

from reapi import clusters, digests
from reapi.errors import ReapiError
from reapi.protos import re_pb2
from workers.models import Operation

log = logging.getLogger(__name__)

STDERR_TAIL_BYTES = 4096
COMMAND_MAX_BYTES = 1 << 20  # an Action or Command larger than this is not read for a page
COMMAND_SHOWN_CHARS = 400
# Terminal colour and cursor sequences (ECMA-48 CSI), and other control characters but tab and
# newline: compilers colour their errors, and a page shows text.
_CSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@dataclass(frozen=True)
class Tail:
    text: str
    truncated: bool  # earlier bytes were left out


def response_of(op: Operation) -> re_pb2.ExecuteResponse | None:
    if not op.response:
        return None
    response = re_pb2.ExecuteResponse()
    try:
        response.ParseFromString(bytes(op.response))
    except DecodeError:
        return None
    return response


def what(op: Operation) -> str:
    """Bazel's mnemonic and target, where the client named them (Bazel 5 and later)."""
    meta = op.requested_by or {}
    mnemonic, target = str(meta.get("action_mnemonic", "")), str(meta.get("target_id", ""))
    return " ".join(p for p in (mnemonic, target) if p)


def outcome(op: Operation) -> str:
    if not op.done:
        return op.stage_name
    if op.status_code:
        return f"{op.status_name}: {op.message}" if op.message else op.status_name
    if op.exit_code:
        text = f"exit {op.exit_code}"
        return f"{text}: {op.message}" if op.message else text
    return "cached result" if op.cached else "exit 0"


def failed(op: Operation) -> bool:
    return bool(op.status_code) or bool(op.exit_code)


def duration(op: Operation) -> timedelta | None:
    if op.started_at and op.completed_at:
        return op.completed_at - op.started_at
    return None


def _text(data: bytes) -> str:
    return _CONTROL.sub("", _CSI.sub("", data.decode("utf-8", "replace")))


def stderr_tail(op: Operation, limit: int = STDERR_TAIL_BYTES) -> Tail | None:
    """The last `limit` bytes of the action's stderr, or None when it wrote none (or it is gone)."""
    response = response_of(op)
    if response is None or not response.HasField("result"):
        return None
    result = response.result
    if result.stderr_raw:
        data = result.stderr_raw
        return Tail(_text(data[-limit:]), len(data) > limit)
    if not result.HasField("stderr_digest") or not result.stderr_digest.size_bytes:
        return None
    try:
        digest = digests.check(result.stderr_digest.hash, result.stderr_digest.size_bytes)
        start = max(0, digest.size - limit)
        cas = clusters.backend(op.storage_alias).cas
        data = b"".join(cas.read(op.tenant.slug, digest, start, 0))
    except ReapiError:  # gone (evicted), or a digest that is no digest
        return None
    except Exception:  # storage out of reach: the page says nothing of why, the log does
        log.warning("stderr of operation %s could not be read", op.name, exc_info=True)
        return None
    text = _text(data)
    if start and "\n" in text:
        text = text.split("\n", 1)[1]  # from the first whole line
    return Tail(text, start > 0)


def command_line(op: Operation) -> str:
    """The command the action ran, quoted as a shell would need it, shortened; '' if unknown."""
    try:
        cas = clusters.backend(op.storage_alias).cas
        action_digest = digests.check(op.action_hash, op.action_size)
        if action_digest.size > COMMAND_MAX_BYTES:
            return ""
        action = re_pb2.Action.FromString(cas.get(op.tenant.slug, action_digest))
        command_digest = digests.check(action.command_digest.hash, action.command_digest.size_bytes)
        if command_digest.size > COMMAND_MAX_BYTES:
            return ""
        command = re_pb2.Command.FromString(cas.get(op.tenant.slug, command_digest))
    except (ReapiError, DecodeError):  # gone, or not the message it should be
        return ""
    except Exception:  # storage out of reach: the page says nothing of why, the log does
        log.warning("command of operation %s could not be read", op.name, exc_info=True)
        return ""
    text = _text(" ".join(shlex.quote(a) for a in command.arguments).encode())
    return text if len(text) <= COMMAND_SHOWN_CHARS else text[: COMMAND_SHOWN_CHARS - 1] + "…"
