"""Moved to tests/support/reapi_client.py. These names stay importable from here only for tests/oidc.py
and bench/, which other work is rewriting now; when they import tests.support.reapi_client, this file goes."""

from tests.support.reapi_client import digest  # noqa: F401
