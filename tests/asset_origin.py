"""Moved to tests/support/asset_origin.py. These names stay importable from here only for tests/oidc.py
and bench/, which other work is rewriting now; when they import tests.support.asset_origin, this file goes."""

from tests.support.asset_origin import Origin  # noqa: F401
