"""Moved to tests/support/databases.py. These names stay importable from here only for tests/oidc.py
and bench/, which other work is rewriting now; when they import tests.support.databases, this file goes."""

from tests.support.databases import fresh_postgres_database  # noqa: F401
