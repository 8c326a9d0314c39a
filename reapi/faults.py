"""Failures of storage (and anything else unexpected) as the errors a client sees.

A client learns what kind of failure it met, never its details: a full disk is
RESOURCE_EXHAUSTED, storage that cannot be written or reached is UNAVAILABLE (both worth a
retry later; reads of a read-only disk keep working), anything else is INTERNAL. The
exception itself, with its server paths, bucket URLs and traceback, goes to the server log
under a request id, and the client's message carries the same id, so an operator handed the
message finds the log line.
"""

import errno
import logging
import secrets
import sys

from django.db import InterfaceError, OperationalError

from reapi.errors import Internal, ReapiError, ResourceExhausted, Unavailable

log = logging.getLogger(__name__)

# A filesystem that is full, or a user quota on it that is.
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# S3 client failures (unreachable endpoint, timeouts, refused or failed requests), by module
# and class name: looked up only once the S3 client is loaded, so a server on local disk does
# not pay half a second at start-up importing it.
S3_FAILURES = (
    ("botocore.exceptions", "BotoCoreError"),
    ("botocore.exceptions", "ClientError"),
    ("boto3.exceptions", "Boto3Error"),
)
# The database went away (the S3 presence index, provenance, quotas live there).
DATABASE_FAILURES: tuple[type[Exception], ...] = (OperationalError, InterfaceError)


def new_request_id() -> str:
    return secrets.token_hex(6)


def as_error(exc: BaseException, doing: str) -> ReapiError:
    """The ReapiError a client gets for `exc`, raised while `doing`. `doing` is for the log
    only (it may name a store's path): the client's message is a fixed text and the id.

    An OSError that gets here is storage's (the server's few other network calls, to an
    OIDC issuer, handle their own): full when the disk or a quota is, otherwise unavailable
    (read-only, permission denied, I/O error, ...).
    """
    if isinstance(exc, ReapiError):
        return exc
    if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
        return _logged(exc, doing, ResourceExhausted, "storage is full; reads still work")
    if isinstance(exc, OSError) or _is_s3_failure(exc):
        return _logged(exc, doing, Unavailable, "storage is unavailable; retry later")
    if isinstance(exc, DATABASE_FAILURES):
        return _logged(exc, doing, Unavailable, "the database is unavailable; retry later")
    return _logged(exc, doing, Internal, "the server failed on this request")


def _is_s3_failure(exc: BaseException) -> bool:
    for module_name, class_name in S3_FAILURES:
        module = sys.modules.get(module_name)  # not loaded: none of its exceptions exist
        if module is not None and isinstance(exc, getattr(module, class_name)):
            return True
    return False


def _logged(exc: BaseException, doing: str, kind: type[ReapiError], message: str) -> ReapiError:
    request = new_request_id()
    log.error("request %s: %s failed: %s: %s", request, doing, type(exc).__name__, exc, exc_info=exc)
    return kind(f"{message} (request {request})")
