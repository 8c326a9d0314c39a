"""Cache modes: what the external (workstation) cluster shares with the internal (CI) one.

Personas: alice's token is acme's CI runner on the internal endpoint, bob's is his workstation
on the external one. Modes are switched with the CLI while both servers keep running.
"""

import os
from pathlib import Path

import grpc
import pytest

from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from tests.support.bazel import bazel_in, genrule_sizes, write_workspace
from tests.support.reapi_client import Client
from tests.support.servers import ReapiServer, manage
from tests.support.storage_helpers import action_with_outputs, within
from tests.support.tenants import Persona

SWITCH_DEADLINE = 5.0


def hit(client: Client, action: re_pb2.Digest) -> bool:
    try:
        client.get_action_result(action)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
        return False
    return True


def switch(slug: str, mode: str, probe: Client, marker: re_pb2.Digest, expect_hit: bool) -> float:
    """Switch with the CLI; seconds until the running external server serves the new mode."""
    result = manage("tenant", "mode", slug, mode)
    assert f"is now {mode}" in result.stdout
    _, seconds = within(SWITCH_DEADLINE, lambda: True if hit(probe, marker) == expect_hit else None)
    return seconds


def test_pass_through_shares_both_ways_and_independent_isolates_both_ways(
    external_server: ReapiServer, internal_server: ReapiServer, acme: Persona
) -> None:
    ci = Client(internal_server.channel(), acme.pat(acme.admin))
    ws = Client(external_server.channel(), acme.pat(acme.developer))
    ci_marker, result = action_with_outputs(ci, os.urandom(500))
    ci.update_action_result(ci_marker, result)
    ws_marker, result = action_with_outputs(ws, os.urandom(500))
    ws.update_action_result(ws_marker, result)
    assert not hit(ws, ci_marker) and not hit(ci, ws_marker)  # independent, the default

    switch(acme.slug, "pass-through", ws, ci_marker, expect_hit=True)
    # The external cluster now uses the internal storage: the workstation's own entry is not
    # there, and what it writes now is a hit for CI at once.
    assert not hit(ws, ws_marker)
    shared, result = action_with_outputs(ws, os.urandom(500))
    ws.update_action_result(shared, result)
    assert hit(ci, shared)

    switch(acme.slug, "independent", ws, ci_marker, expect_hit=False)
    assert hit(ws, ws_marker)  # the external storage is as it was
    assert not hit(ws, shared)


@pytest.mark.bazel
def test_a_workstation_build_after_ci_hits_in_pass_through_and_never_in_independent(
    tmp_path: Path, external_server: ReapiServer, internal_server: ReapiServer, acme: Persona
) -> None:
    ci_pat, ws_pat = acme.pat(acme.admin), acme.pat(acme.developer)
    ci_flags = (f"--remote_cache={internal_server.url}", f"--remote_header=X-Aspect={ci_pat}")
    ws_flags = (f"--remote_cache={external_server.url}", f"--remote_header=X-Aspect={ws_pat}")
    probe = Client(external_server.channel(), ws_pat)
    ci_client = Client(internal_server.channel(), ci_pat)
    marker, result = action_with_outputs(ci_client, os.urandom(100))
    ci_client.update_action_result(marker, result)
    switch(acme.slug, "pass-through", probe, marker, expect_hit=True)

    with bazel_in(tmp_path) as bazel:
        targets = write_workspace(bazel.workspace, genrule_sizes(10, largest=1024 * 1024), salt=acme.slug)

        def build(flags: tuple[str, ...]) -> dict[str, int]:
            bazel.clean()
            built = bazel.build(*flags)
            assert built.returncode == 0, built.output
            assert built.actions == len(targets), built.output
            return built.processes

        ci_build = build(ci_flags)
        assert "remote cache hit" not in ci_build
        # Pass-through: CI's writes are the workstation's hits, every one of them.
        assert build(ws_flags).get("remote cache hit") == len(targets)

        seconds = switch(acme.slug, "independent", probe, marker, expect_hit=False)
        assert seconds < SWITCH_DEADLINE
        # Independent: nothing CI wrote is a hit (and this build fills the external storage).
        assert "remote cache hit" not in build(ws_flags)

        switch(acme.slug, "pass-through", probe, marker, expect_hit=True)
        assert build(ws_flags).get("remote cache hit") == len(targets)

        # Back to independent: the external storage is as the independent build left it.
        switch(acme.slug, "independent", probe, marker, expect_hit=False)
        assert build(ws_flags).get("remote cache hit") == len(targets)
