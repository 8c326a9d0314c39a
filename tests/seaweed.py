"""Moved to tests/support/seaweed.py. These names stay importable from here only for tests/oidc.py
and bench/, which other work is rewriting now; when they import tests.support.seaweed, this file goes."""

from tests.support.seaweed import SeaweedS3  # noqa: F401
