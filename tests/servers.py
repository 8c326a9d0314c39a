"""Moved to tests/support/servers.py. These names stay importable from here only for tests/oidc.py
and bench/, which other work is rewriting now; when they import tests.support.servers, this file goes."""

from tests.support.servers import ROOT, free_port, stop_process  # noqa: F401
