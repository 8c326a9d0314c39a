"""Real Bazel against the real server: full remote-cache hits with a PAT, refused without."""

from pathlib import Path

import pytest

from portal import tokens
from tests.support.bazel import bazel_in, genrule_sizes, write_workspace
from tests.support.servers import ReapiServer
from tests.support.tenants import Persona

pytestmark = pytest.mark.bazel


def test_it_serves_every_action_from_the_cache_after_a_clean(
    tmp_path: Path, external_server: ReapiServer, acme: Persona
) -> None:
    pat = acme.pat(acme.developer)
    sizes = genrule_sizes(100, largest=5 * 1024 * 1024)
    assert sizes[0] == 1024 and sizes[-1] >= 4 * 1024 * 1024
    with bazel_in(tmp_path) as bazel:
        targets = write_workspace(bazel.workspace, sizes, salt=acme.slug)
        flags = (f"--remote_cache={external_server.url}", f"--remote_header=X-Aspect={pat}")

        first = bazel.build(*flags)
        assert first.returncode == 0, first.output
        assert first.actions == len(targets), first.output
        assert "remote cache hit" not in first.processes, first.output
        built = bazel.outputs()

        bazel.clean()
        second = bazel.build(*flags)
        assert second.returncode == 0, second.output
        assert second.processes.get("remote cache hit") == len(targets), second.output
        assert second.actions == len(targets), second.output
        assert bazel.outputs() == built


def test_it_refuses_bazel_without_a_token(
    tmp_path: Path, external_server: ReapiServer, acme: Persona
) -> None:
    with bazel_in(tmp_path) as bazel:
        write_workspace(bazel.workspace, [1024, 2048], salt="noauth")
        result = bazel.build(f"--remote_cache={external_server.url}")
        assert result.returncode != 0, result.output
        assert "UNAUTHENTICATED" in result.output
        assert "no credential" in result.output


def test_it_refuses_bazel_with_a_revoked_token(
    tmp_path: Path, external_server: ReapiServer, acme: Persona
) -> None:
    issued = tokens.issue(acme.tenant, acme.developer or "", name="revoked")
    tokens.revoke(issued.token)
    with bazel_in(tmp_path) as bazel:
        write_workspace(bazel.workspace, [1024, 2048], salt="revoked")
        result = bazel.build(
            f"--remote_cache={external_server.url}", f"--remote_header=X-Aspect={issued.secret}"
        )
        assert result.returncode != 0, result.output
        assert "UNAUTHENTICATED" in result.output
        assert "revoked" in result.output
