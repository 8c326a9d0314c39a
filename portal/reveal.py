"""Secrets shown once on the page a form redirects to (a new PAT, a set-password link).

A form that makes a secret answers its POST with a redirect, so reloading the page never makes a
second one. The secret waits for that next page in the server's cache (memory by default,
Redis with PORTAL_CACHE_URL) for at most KEEP_SECONDS under a random key, and the session holds
only that key: the secret is in no cookie, URL, message or database row. The first view takes
it out; a second view, or another browser, finds nothing and says it was shown once.
"""

import secrets
from enum import Enum

from django.core.cache import cache
from django.http import HttpRequest

KEEP_SECONDS = 300
SESSION_KEY = "portal_reveal"


class Gone(Enum):
    SHOWN = "shown"  # this session had it and showed it, or never had it
    LOST = "lost"  # this session was to show it, but the cache no longer holds it


def keep(request: HttpRequest, kind: str, object_id: int, secret: str) -> None:
    key = f"reveal:{secrets.token_urlsafe(24)}"
    cache.set(key, secret, KEEP_SECONDS)
    waiting = dict(request.session.get(SESSION_KEY, {}))
    waiting[f"{kind}:{object_id}"] = key
    request.session[SESSION_KEY] = waiting


def take(request: HttpRequest, kind: str, object_id: int) -> str | Gone:
    """The secret, once; afterwards Gone.SHOWN. Gone.LOST when it expired or another portal
    process (with a cache of its own) made it."""
    waiting = dict(request.session.get(SESSION_KEY, {}))
    key = waiting.pop(f"{kind}:{object_id}", None)
    if key is None:
        return Gone.SHOWN
    request.session[SESSION_KEY] = waiting
    secret = cache.get(key)
    # delete() is True for one caller only: two requests racing for the page show it once.
    if secret is None or not cache.delete(key):
        return Gone.LOST
    return str(secret)
