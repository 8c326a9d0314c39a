"""Provenance of action-cache entries, and `token revoke --purge`.

Personas: in acme, bob's workstation token leaks and writes bad entries; alice (CI) writes good
ones. globex's charlie is an outsider whose entries a purge in acme must not touch.
"""

import datetime
import os
import uuid
from pathlib import Path

import grpc
import pytest
from django.utils import timezone

from portal import tokens
from portal.models import AccessToken, AuditEvent
from reapi import provenance
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from reapi.models import ActionProvenance
from tests.support.bazel import bazel_in, write_workspace
from tests.support.reapi_client import Client
from tests.support.servers import ReapiServer, manage
from tests.support.storage_helpers import action_with_outputs
from tests.support.tenants import Persona

METADATA_KEY = "build.bazel.remote.execution.v2.requestmetadata-bin"


def issued(persona: Persona, user: str | None) -> tuple[str, AccessToken]:
    pat = persona.pat(user)
    return pat, tokens.find(pat)


def write_entry(client: Client, invocation: str = "") -> re_pb2.Digest:
    action, result = action_with_outputs(client, os.urandom(100))
    meta = re_pb2.RequestMetadata(
        tool_details=re_pb2.ToolDetails(tool_name="bazel", tool_version="4.2.3"),
        tool_invocation_id=invocation,
        correlated_invocations_id="build-42",
    )
    client.ac.UpdateActionResult(
        re_pb2.UpdateActionResultRequest(action_digest=action, action_result=result),
        metadata=(*client.metadata, (METADATA_KEY, meta.SerializeToString())),
    )
    return action


def is_hit(client: Client, action: re_pb2.Digest) -> bool:
    try:
        client.get_action_result(action)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
        return False
    return True


def test_every_action_result_records_who_wrote_it(external_server: ReapiServer, acme: Persona) -> None:
    pat, token = issued(acme, acme.developer)
    invocation = str(uuid.uuid4())
    before = timezone.now()
    action = write_entry(Client(external_server.channel(), pat), invocation)

    row = ActionProvenance.objects.get(tenant=acme.slug, action_hash=action.hash)
    assert (row.token_id, row.token_prefix, row.user_id, row.username) == (
        token.id,
        token.prefix,
        token.user_id,
        acme.developer,
    )
    assert (row.cluster, row.storage) == ("external", "reapi-external")
    assert before <= row.written_at <= timezone.now()
    assert (row.tool_name, row.tool_version, row.tool_invocation_id, row.correlated_invocations_id) == (
        "bazel",
        "4.2.3",
        invocation,
        "build-42",
    )


def test_a_purge_removes_the_entries_that_token_wrote_and_only_those(
    external_server: ReapiServer, internal_server: ReapiServer, acme: Persona, globex: Persona
) -> None:
    leaked_pat, leaked = issued(acme, acme.developer)
    ci_pat, _ = issued(acme, acme.admin)
    outsider_pat, _ = issued(globex, globex.admin)
    leaked_ext = Client(external_server.channel(), leaked_pat)
    leaked_int = Client(internal_server.channel(), leaked_pat)
    ci_ext = Client(external_server.channel(), ci_pat)
    ci_int = Client(internal_server.channel(), ci_pat)
    outsider = Client(external_server.channel(), outsider_pat)

    bad = [write_entry(leaked_ext), write_entry(leaked_ext), write_entry(leaked_int)]
    good = [write_entry(ci_ext), write_entry(ci_int)]
    # An entry the leaked token wrote and CI then rewrote is CI's now.
    rewritten = write_entry(leaked_ext)
    ci_ext.update_action_result(rewritten, ci_ext.get_action_result(rewritten))
    theirs = write_entry(outsider)

    result = manage("token", "revoke", str(leaked.id), "--purge")
    assert f"purged 3 action-cache entries written by token {leaked.id}" in result.stdout

    assert [is_hit(ci_ext, a) for a in bad[:2]] == [False, False]
    assert not is_hit(ci_int, bad[2])
    assert [is_hit(ci_ext, good[0]), is_hit(ci_int, good[1]), is_hit(ci_ext, rewritten)] == [True] * 3
    assert is_hit(outsider, theirs)
    assert not ActionProvenance.objects.filter(token_id=leaked.id).exists()
    assert ActionProvenance.objects.filter(tenant=acme.slug).count() == 3
    event = AuditEvent.objects.get(action="token.purge", token_prefix=leaked.prefix)
    assert event.detail == {"entries": 3}


def test_a_purge_refuses_a_token_that_still_works(acme: Persona) -> None:
    _, token = issued(acme, acme.developer)
    with pytest.raises(provenance.PurgeError, match="revoke it"):
        provenance.purge_token(token.id)
    result = manage("token", "revoke", "12345678", "--purge", check=False)
    assert result.returncode != 0 and "no such token" in result.stderr


def test_a_revoked_token_cannot_write_even_while_servers_still_trust_it(
    external_server: ReapiServer, acme: Persona
) -> None:
    pat, token = issued(acme, acme.developer)
    client = Client(external_server.channel(), pat)
    write_entry(client)  # the server now trusts this credential for a couple of seconds
    tokens.revoke(token)
    action, result = action_with_outputs(client, b"late")  # CAS writes may still pass ...
    with pytest.raises(grpc.RpcError) as info:
        client.update_action_result(action, result)  # ... but no entry without a live writer
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in (info.value.details() or "")
    assert not is_hit(Client(external_server.channel(), acme.pat()), action)


@pytest.mark.bazel
def test_bazel_invocations_are_recorded_and_a_purged_build_is_a_miss(
    tmp_path: Path, external_server: ReapiServer, acme: Persona
) -> None:
    leaked_pat, leaked = issued(acme, acme.developer)
    good_pat, _ = issued(acme, acme.admin)
    remote = f"--remote_cache={external_server.url}"
    with bazel_in(tmp_path) as bazel:
        labels = write_workspace(bazel.workspace, [1024] * 8, salt=acme.slug)
        bad_targets, good_targets = tuple(labels[:4]), tuple(labels[4:8])
        invocation = str(uuid.uuid4())
        built = bazel.build(
            remote,
            f"--remote_header=X-Aspect={leaked_pat}",
            f"--invocation_id={invocation}",
            targets=bad_targets,
        )
        assert built.returncode == 0, built.output
        assert (
            bazel.build(remote, f"--remote_header=X-Aspect={good_pat}", targets=good_targets).returncode == 0
        )

        rows = ActionProvenance.objects.filter(token_id=leaked.id)
        assert rows.count() == len(bad_targets)
        assert {r.tool_invocation_id for r in rows} == {invocation}
        assert {r.tool_name for r in rows} == {"bazel"}
        assert all(r.written_at > timezone.now() - datetime.timedelta(minutes=5) for r in rows)

        manage("token", "revoke", leaked_pat, "--purge")

        bazel.clean()
        again = bazel.build(remote, f"--remote_header=X-Aspect={good_pat}", targets=bad_targets)
        assert again.returncode == 0, again.output
        assert "remote cache hit" not in again.processes, again.output
        assert again.actions == len(bad_targets), again.output
        kept = bazel.build(remote, f"--remote_header=X-Aspect={good_pat}", targets=good_targets)
        assert kept.processes.get("remote cache hit") == len(good_targets), kept.output
