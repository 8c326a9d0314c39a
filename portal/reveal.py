"""Secrets shown once on the page a form redirects to (a new PAT, a set-password link).

A form that makes a secret answers its POST with a redirect, so reloading the page never makes a
second one. The secret waits for that next page in the session, which lives in the database (so
any portal process, on any machine, serves the page): encrypted (AES-GCM, with a key derived
from DJANGO_SECRET_KEY, which the database does not hold), for at most KEEP_SECONDS, and removed
by the first view. It is in no cookie (the cookie holds the session's id), URL or message. A
second view, or another browser, finds nothing and says it was shown once.
"""

import base64
import secrets
import time
from enum import Enum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.http import HttpRequest

KEEP_SECONDS = 300
SESSION_KEY = "portal_reveal"


class Gone(Enum):
    SHOWN = "shown"  # this session showed it already, or never had it
    LOST = "lost"  # this session was to show it, but waited more than KEEP_SECONDS


def _cipher() -> AESGCM:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"portal reveal v1").derive(
        settings.SECRET_KEY.encode()
    )
    return AESGCM(key)


def _waiting(request: HttpRequest, now: float) -> dict[str, dict[str, object]]:
    """The session's secrets still waiting, the stale ones dropped."""
    kept = request.session.get(SESSION_KEY, {})
    return {name: entry for name, entry in kept.items() if float(str(entry.get("until", 0))) > now}


def keep(request: HttpRequest, kind: str, object_id: int, secret: str) -> None:
    now = time.time()
    name = f"{kind}:{object_id}"
    nonce = secrets.token_bytes(12)
    sealed = nonce + _cipher().encrypt(nonce, secret.encode(), name.encode())
    waiting = _waiting(request, now)
    waiting[name] = {"sealed": base64.b64encode(sealed).decode(), "until": now + KEEP_SECONDS}
    request.session[SESSION_KEY] = waiting


def take(request: HttpRequest, kind: str, object_id: int) -> str | Gone:
    """The secret, once; afterwards Gone.SHOWN. Gone.LOST when it waited too long."""
    now = time.time()
    name = f"{kind}:{object_id}"
    kept = request.session.get(SESSION_KEY, {})
    if name not in kept:
        return Gone.SHOWN
    waiting = _waiting(request, now)
    entry = waiting.pop(name, None)
    request.session[SESSION_KEY] = waiting  # saved with the response: gone from the database
    if entry is None:
        return Gone.LOST
    sealed = base64.b64decode(str(entry["sealed"]))
    try:
        return _cipher().decrypt(sealed[:12], sealed[12:], name.encode()).decode()
    except InvalidTag:  # sealed under another DJANGO_SECRET_KEY
        return Gone.LOST
