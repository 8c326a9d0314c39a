"""The generated .bazelrc works the first time: real Bazel 4.2.3 reads it with the startup option
`--bazelrc=FILE` and gets remote cache hits from a real REAPI server after `bazel clean`."""

from pathlib import Path

import pytest

from tests.support.bazel import bazel_in, write_workspace
from tests.support.servers import ReapiServer, manage
from tests.support.tenants import Persona

pytestmark = pytest.mark.bazel


def snippet(persona: Persona, server: ReapiServer, token: str, *flags: str) -> str:
    # The endpoint comes from REAPI_EXTERNAL_URL, as it would in a deployment.
    result = manage(
        "bazelrc",
        "--tenant",
        persona.slug,
        "--cluster",
        "external",
        "--token",
        token,
        *flags,
        env={"REAPI_EXTERNAL_URL": server.url},
    )
    return result.stdout


def test_a_generated_snippet_gets_remote_cache_hits(
    tmp_path: Path, external_server: ReapiServer, acme: Persona
) -> None:
    text = snippet(
        acme, external_server, acme.pat(acme.developer), "--instance-name", "--download", "toplevel"
    )
    assert f"build --remote_cache={external_server.url}\n" in text
    assert f"build --remote_instance_name={acme.slug}\n" in text
    rc = tmp_path / "remote.bazelrc"
    rc.write_text(text)
    with bazel_in(tmp_path, startup=(f"--bazelrc={rc}",)) as bazel:
        targets = write_workspace(bazel.workspace, [1024, 4096, 65536, 300_000], salt=acme.slug)
        first = bazel.build()
        assert first.returncode == 0, first.output
        assert first.actions == len(targets), first.output
        built = bazel.outputs()
        bazel.clean()
        second = bazel.build()
        assert second.returncode == 0, second.output
        assert second.processes.get("remote cache hit") == len(targets), second.output
        assert bazel.outputs() == built


def test_a_read_only_snippet_builds_without_writing(
    tmp_path: Path, external_server: ReapiServer, acme: Persona
) -> None:
    token = acme.pat(acme.developer, scopes="cas:read,ac:read")
    text = snippet(acme, external_server, token, "--read-only")
    assert "build --noremote_upload_local_results\n" in text
    rc = tmp_path / "readonly.bazelrc"
    rc.write_text(text)
    with bazel_in(tmp_path, startup=(f"--bazelrc={rc}",)) as bazel:
        write_workspace(bazel.workspace, [1024, 2048], salt=acme.slug + "-ro")
        result = bazel.build()
        assert result.returncode == 0, result.output
        assert "PERMISSION_DENIED" not in result.output, "a read-only snippet never tries to upload"
