"""What CI accepts from workstations, in pass-through: all, confirmed, none.

Personas: in acme, alice's token is the CI runner on the internal endpoint; bob and carol are
developers on workstations (the external endpoint). Settings are switched with the CLI while
both servers keep running, and reach them within the credential cache time.
"""

import os
from pathlib import Path

import grpc
import pytest
from django.test import Client as PageClient

from portal import tenancy, tokens
from portal.models import AuditEvent, Tenant
from reapi import ac_entries, clusters, digests
from reapi.auth import Principal
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from reapi.limits import Caller
from reapi.models import ActionProvenance, ActionVote, ResultConflict
from tests.support.bazel import Bazel, bazel_in, write_workspace
from tests.support.reapi_client import Client, digest
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


def accepts(persona: Persona, value: str, *extra: str) -> None:
    out = manage("tenant", "ci-accepts", persona.slug, value, *extra).stdout
    assert f"tenant {persona.slug}: CI accepts {value}" in out, out


def switch(persona: Persona, value: str, probe: Client, marker: re_pb2.Digest, expect_hit: bool) -> float:
    """Set what CI accepts with the CLI; seconds until the running internal server follows."""
    accepts(persona, value)
    _, seconds = within(SWITCH_DEADLINE, lambda: True if hit(probe, marker) == expect_hit else None)
    return seconds


class Acme:
    """acme in pass-through: CI (alice, internal), bob's and carol's workstations (external)."""

    def __init__(self, acme: Persona, external: ReapiServer, internal: ReapiServer) -> None:
        self.persona = acme
        self.carol = f"carol-{acme.slug}"
        tenancy.add_member(acme.tenant, self.carol)
        manage("tenant", "mode", acme.slug, "pass-through")
        self.ci = Client(internal.channel(), acme.pat(acme.admin))
        self.bob = Client(external.channel(), acme.pat(acme.developer))
        self.carol_ws = Client(external.channel(), acme.pat(self.carol))
        self.external, self.internal = external, internal


@pytest.fixture
def pt(acme: Persona, external_server: ReapiServer, internal_server: ReapiServer) -> Acme:
    return Acme(acme, external_server, internal_server)


def written_by(client: Client, *outputs: bytes) -> tuple[re_pb2.Digest, re_pb2.ActionResult]:
    action, result = action_with_outputs(client, *(outputs or (os.urandom(300),)))
    client.update_action_result(action, result)
    return action, result


def rewritten(result: re_pb2.ActionResult, worker: str) -> re_pb2.ActionResult:
    """The same result as another run reports it: other metadata, identical outputs."""
    again = re_pb2.ActionResult()
    again.CopyFrom(result)
    again.execution_metadata.worker = worker
    return again


# --- none ---------------------------------------------------------------------------------------


def test_none_serves_a_workstation_result_to_workstations_only_and_ci_results_to_both(pt: Acme) -> None:
    accepts(pt.persona, "none")
    mine, result = written_by(pt.bob)
    assert hit(pt.bob, mine) and hit(pt.carol_ws, mine)  # the writer's whole tenant on workstations
    assert not hit(pt.ci, mine)
    with pytest.raises(grpc.RpcError) as info:
        pt.ci.get_action_result(mine)
    assert "written by a workstation" in (info.value.details() or "")
    # CAS blobs stay shared: CI reads the workstation's outputs.
    output = result.output_files[0].digest
    assert pt.ci.missing(output) == []

    ci_action, ci_result = written_by(pt.ci)
    assert pt.bob.get_action_result(ci_action) == ci_result
    assert pt.ci.get_action_result(ci_action) == ci_result

    # A workstation's write beside CI's servable result leaves CI's in place, for both.
    pt.bob.update_action_result(ci_action, re_pb2.ActionResult(exit_code=0))
    assert pt.ci.get_action_result(ci_action) == ci_result
    assert pt.bob.get_action_result(ci_action) == ci_result


def test_the_setting_moves_nothing_and_switching_back_restores_what_was_visible(pt: Acme) -> None:
    before_all, _ = written_by(pt.bob)  # written under `all`, the default
    assert hit(pt.ci, before_all)

    seconds = switch(pt.persona, "none", pt.ci, before_all, expect_hit=False)
    assert seconds < SWITCH_DEADLINE
    under_none, _ = written_by(pt.bob)
    assert not hit(pt.ci, under_none)
    assert hit(pt.bob, before_all) and hit(pt.bob, under_none)

    switch(pt.persona, "all", pt.ci, before_all, expect_hit=True)
    assert hit(pt.ci, under_none)  # what workstations wrote meanwhile is CI's too
    switch(pt.persona, "confirmed", pt.ci, before_all, expect_hit=False)
    switch(pt.persona, "all", pt.ci, before_all, expect_hit=True)
    events = AuditEvent.objects.filter(tenant=pt.persona.tenant, action="tenant.ci_accepts")
    assert [e.detail["new"] for e in events.order_by("created_at")] == ["none", "all", "confirmed", "all"]


# --- confirmed ----------------------------------------------------------------------------------


def test_confirmed_by_ci_writing_the_identical_result(pt: Acme) -> None:
    accepts(pt.persona, "confirmed")
    action, result = written_by(pt.bob)
    assert not hit(pt.ci, action)
    pt.ci.update_action_result(action, rewritten(result, "ci-runner-7"))
    assert hit(pt.ci, action) and hit(pt.bob, action)
    assert not ResultConflict.objects.filter(tenant=pt.persona.tenant).exists()


def test_confirmed_by_distinct_users_writing_identical_results(pt: Acme) -> None:
    accepts(pt.persona, "confirmed")
    action, result = written_by(pt.bob)
    # The same user again, with another token, is still one user.
    Client(pt.external.channel(), pt.persona.pat(pt.persona.developer)).update_action_result(
        action, rewritten(result, "bob-laptop-2")
    )
    assert not hit(pt.ci, action)
    # A second user's *different* result replaces the first and starts its count again.
    pt.carol_ws.update_action_result(action, written_result(pt.carol_ws))
    assert not hit(pt.ci, action)
    pt.bob.update_action_result(action, result)
    assert not hit(pt.ci, action)
    pt.carol_ws.update_action_result(action, rewritten(result, "carol-desktop"))
    assert pt.ci.get_action_result(action).output_files == result.output_files

    # Three users needed now: the same entry is not CI's any more, and nothing moved.
    accepts(pt.persona, "confirmed", "--users", "3")
    within(SWITCH_DEADLINE, lambda: True if not hit(pt.ci, action) else None)
    dora = f"dora-{pt.persona.slug}"
    tenancy.add_member(pt.persona.tenant, dora)
    Client(pt.external.channel(), pt.persona.pat(dora)).update_action_result(action, result)
    assert hit(pt.ci, action)
    assert Tenant.objects.get(pk=pt.persona.tenant.pk).ci_confirmations == 3


def written_result(client: Client) -> re_pb2.ActionResult:
    _, result = action_with_outputs(client, os.urandom(300))
    return result


def test_a_different_ci_result_wins_for_everyone_and_the_conflict_is_listed(pt: Acme) -> None:
    accepts(pt.persona, "confirmed")
    action, theirs = written_by(pt.bob, b"built on a workstation\n")
    pt.carol_ws.update_action_result(action, theirs)
    assert hit(pt.ci, action)  # two users confirmed it
    _, ours = action_with_outputs(pt.ci, b"built by CI\n")
    pt.ci.update_action_result(action, ours)
    assert pt.bob.get_action_result(action).output_files == ours.output_files
    assert pt.ci.get_action_result(action).output_files == ours.output_files

    conflict = ResultConflict.objects.get(tenant=pt.persona.tenant)
    assert (conflict.action_hash, conflict.action_size) == (action.hash, action.size_bytes)
    assert conflict.workstation_users == f"{pt.persona.developer}, {pt.carol}"
    assert conflict.ci_user == pt.persona.admin
    their_file = theirs.output_files[0].digest
    our_file = ours.output_files[0].digest
    assert conflict.workstation_outputs["outputs"]["out/0"] == f"{their_file.hash}/{their_file.size_bytes}"
    assert conflict.ci_outputs["outputs"]["out/0"] == f"{our_file.hash}/{our_file.size_bytes}"
    assert conflict.workstation_result != conflict.ci_result
    assert (
        conflict.workstation_written_at is not None
        and conflict.workstation_written_at <= conflict.detected_at
    )

    page = PageClient()
    page.force_login(pt.persona.tenant.memberships.get(user__username=pt.persona.admin).user)
    html = page.get(f"/t/{pt.persona.slug}/cache-mode/").content.decode()
    assert 'id="conflicts-table"' in html
    for shown in (
        action.hash[:12],
        pt.persona.developer or "",
        pt.carol,
        pt.persona.admin,
        conflict.workstation_result[:12],
        conflict.ci_result[:12],
        "out/0",
    ):
        assert shown in html, shown


def test_a_purge_withdraws_the_tokens_vote_and_deletes_what_it_alone_wrote(pt: Acme) -> None:
    accepts(pt.persona, "confirmed")
    leaked_pat = pt.persona.pat(pt.persona.developer)
    leaked = Client(pt.external.channel(), leaked_pat)
    token = tokens.find(leaked_pat)
    vouched, result = written_by(leaked)
    pt.carol_ws.update_action_result(vouched, result)  # carol is now its last writer
    alone, _ = written_by(leaked)
    assert hit(pt.ci, vouched) and not hit(pt.ci, alone)
    assert ActionVote.objects.filter(token_id=token.id).count() == 2

    out = manage("token", "revoke", str(token.id), "--purge").stdout
    assert "purged 1 action-cache entries" in out, out
    assert not hit(pt.ci, vouched)  # one user's vote is left: not confirmed any more
    assert hit(pt.carol_ws, vouched)  # carol's result stays hers
    assert not hit(pt.carol_ws, alone)
    assert not ActionVote.objects.filter(token_id=token.id).exists()
    event = AuditEvent.objects.get(action="token.purge", token_prefix=token.prefix)
    assert event.detail == {"entries": 1, "votes_withdrawn": 1}


# --- independent mode, tenancy, older entries, Execute -----------------------------------------


def test_independent_mode_is_unaffected(
    acme: Persona, external_server: ReapiServer, internal_server: ReapiServer
) -> None:
    accepts(acme, "none")
    ci = Client(internal_server.channel(), acme.pat(acme.admin))
    ws = Client(external_server.channel(), acme.pat(acme.developer))
    ws_action, _ = written_by(ws)
    ci_action, _ = written_by(ci)
    assert hit(ws, ws_action) and hit(ci, ci_action)
    assert not hit(ci, ws_action) and not hit(ws, ci_action)


def test_tenancy_is_unchanged(pt: Acme, globex: Persona) -> None:
    manage("tenant", "mode", globex.slug, "pass-through")
    outsider_ci = Client(pt.internal.channel(), globex.pat())
    outsider_ws = Client(pt.external.channel(), globex.pat())
    ws_action, _ = written_by(pt.bob)
    ci_action, _ = written_by(pt.ci)
    for action in (ws_action, ci_action):
        assert not hit(outsider_ci, action) and not hit(outsider_ws, action)
    accepts(pt.persona, "none")
    # globex still accepts all: its CI takes its own workstations' results, never acme's.
    theirs, _ = written_by(outsider_ws)
    assert hit(outsider_ci, theirs) and not hit(pt.ci, theirs) and not hit(pt.bob, theirs)


def legacy_entry(pt: Acme, cluster: str | None) -> re_pb2.Digest:
    """An entry as a server before this feature stored it (the bare ActionResult) in CI's
    storage, with a provenance record naming `cluster` (None: no record)."""
    action, result = action_with_outputs(pt.ci, os.urandom(200))
    alias = "reapi-internal"
    key = digests.ac_key(pt.persona.slug, digests.Digest(action.hash, action.size_bytes))
    clusters.backend(alias).store.put(key, result.SerializeToString(deterministic=True))
    if cluster is not None:
        ActionProvenance.objects.create(
            storage=alias,
            tenant=pt.persona.slug,
            action_hash=action.hash,
            action_size=action.size_bytes,
            cluster=cluster,
            username="someone",
        )
    return action


def test_older_entries_are_judged_by_their_provenance_once_then_carry_their_origin(pt: Acme) -> None:
    ci_wrote, ws_wrote, unknown = (legacy_entry(pt, c) for c in ("internal", "external", None))
    assert all(hit(pt.ci, a) for a in (ci_wrote, ws_wrote, unknown))  # all: as before, no lookup
    accepts(pt.persona, "none")
    within(SWITCH_DEADLINE, lambda: True if not hit(pt.ci, ws_wrote) else None)
    assert hit(pt.ci, ci_wrote) and not hit(pt.ci, unknown)
    assert all(hit(pt.bob, a) for a in (ci_wrote, ws_wrote, unknown))
    store = clusters.backend("reapi-internal").store
    for action, origin in ((ci_wrote, ac_entries.INTERNAL), (ws_wrote, ac_entries.EXTERNAL)):
        data = store.get(digests.ac_key(pt.persona.slug, digests.Digest(action.hash, action.size_bytes)))
        assert data is not None
        entry = ac_entries.decode(data)
        assert entry is not None and entry.origin == origin


def test_execute_on_ci_answers_from_the_cache_only_with_what_ci_accepts(
    pt: Acme, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reapi import scheduler

    queued: list[str] = []
    monkeypatch.setattr(scheduler, "enqueue", lambda op: queued.append(op.name))
    command = re_pb2.Command(arguments=["true"], output_files=["out"]).SerializeToString()
    action_msg = re_pb2.Action(
        command_digest=digest(command), input_root_digest=digest(b"")
    ).SerializeToString()
    pt.bob.upload(command, action_msg)
    action = digest(action_msg)
    _, result = action_with_outputs(pt.bob, os.urandom(100))
    pt.bob.update_action_result(action, result)

    def ci_principal(ci_accepts: str) -> Principal:
        tenant = pt.persona.tenant
        return Principal(
            tenant=tenant.slug,
            tenant_id=tenant.id,
            cache_mode="pass-through",
            user_id=0,
            username=pt.persona.admin,
            scopes=frozenset({"execute"}),
            expires_at=None,
            ci_accepts=ci_accepts,
            caller=Caller(key="test:ci", tenant=tenant.slug, label="ci", rate=None),
        )

    cached = scheduler.submit(
        "internal", ci_principal("all"), digests.Digest(action.hash, action.size_bytes), False
    )
    assert cached.cached and not queued
    ran = scheduler.submit(
        "internal", ci_principal("none"), digests.Digest(action.hash, action.size_bytes), False
    )
    assert not ran.cached and queued == [ran.name]


def test_the_setting_from_the_command_line_refuses_nonsense(acme: Persona) -> None:
    bad = manage("tenant", "ci-accepts", acme.slug, "some", check=False)
    assert bad.returncode != 0 and "invalid choice" in bad.stderr
    few = manage("tenant", "ci-accepts", acme.slug, "confirmed", "--users", "1", check=False)
    assert few.returncode != 0 and "2 to 20 distinct users" in few.stderr
    missing = manage("tenant", "ci-accepts", "no-such-tenant", "none", check=False)
    assert missing.returncode != 0 and "no tenant 'no-such-tenant'" in missing.stderr
    out = manage("tenant", "ci-accepts", acme.slug, "confirmed", "--users", "4").stdout
    assert "CI accepts confirmed (by CI or 4 users) from workstations" in out
    tenant = Tenant.objects.get(pk=acme.tenant.pk)
    assert (tenant.ci_accepts, tenant.ci_confirmations, tenant.cache_mode) == ("confirmed", 4, "independent")


def test_admins_set_it_on_the_cache_mode_page_and_developers_cannot(acme: Persona) -> None:
    from django.contrib.auth import get_user_model

    users = get_user_model().objects
    alice, bob = PageClient(), PageClient()
    alice.force_login(users.get(username=acme.admin))
    bob.force_login(users.get(username=acme.developer))
    page = alice.get(f"/t/{acme.slug}/cache-mode/").content.decode()
    assert 'id="current-ci-accepts">all<' in page
    for paragraph in (
        "today's behaviour and the default",
        "CI itself has written the identical",
        "CI never takes",
    ):
        assert paragraph in page
    reply = alice.post(f"/t/{acme.slug}/cache-mode/", {"ci_accepts": "none", "ci_confirmations": "2"})
    assert reply.status_code == 302
    assert Tenant.objects.get(pk=acme.tenant.pk).ci_accepts == "none"
    assert Tenant.objects.get(pk=acme.tenant.pk).cache_mode == "independent"  # the other form's
    assert (
        alice.post(
            f"/t/{acme.slug}/cache-mode/", {"ci_accepts": "maybe", "ci_confirmations": "2"}
        ).status_code
        == 200
    )
    assert (
        bob.post(f"/t/{acme.slug}/cache-mode/", {"ci_accepts": "all", "ci_confirmations": "2"}).status_code
        == 403
    )
    assert Tenant.objects.get(pk=acme.tenant.pk).ci_accepts == "none"
    event = AuditEvent.objects.get(tenant=acme.tenant, action="tenant.ci_accepts")
    assert event.actor is not None and event.actor.get_username() == acme.admin
    assert event.detail["old"] == "all" and event.detail["new"] == "none"


# --- real Bazel ---------------------------------------------------------------------------------


class Builds:
    """One workspace, built through CI's flags or a workstation's, always after `bazel clean`."""

    def __init__(self, bazel: Bazel, pt: Acme) -> None:
        self.bazel = bazel
        persona = pt.persona
        self.flags = {
            "ci": (
                f"--remote_cache={pt.internal.url}",
                f"--remote_header=X-Aspect={persona.pat(persona.admin)}",
            ),
            "bob": (
                f"--remote_cache={pt.external.url}",
                f"--remote_header=X-Aspect={persona.pat(persona.developer)}",
            ),
            "carol": (
                f"--remote_cache={pt.external.url}",
                f"--remote_header=X-Aspect={persona.pat(pt.carol)}",
            ),
        }
        self.targets: list[str] = []

    def workspace(self, salt: str, count: int = 6) -> None:
        self.targets = write_workspace(
            self.bazel.workspace, [1024 * (i + 1) for i in range(count)], salt=salt
        )

    def hits(self, who: str, *extra: str) -> int:
        """Remote cache hits of a clean build of every target."""
        self.bazel.clean()
        built = self.bazel.build(*self.flags[who], *extra)
        assert built.returncode == 0, built.output
        assert built.actions == len(self.targets), built.output
        return built.processes.get("remote cache hit", 0)


@pytest.mark.bazel
def test_bazel_none_keeps_ci_off_workstation_results_and_workstations_on_cis(
    tmp_path: Path, pt: Acme
) -> None:
    accepts(pt.persona, "none")
    with bazel_in(tmp_path) as bazel:
        builds = Builds(bazel, pt)
        builds.workspace(f"{pt.persona.slug}-1")
        assert builds.hits("bob") == 0
        assert builds.hits("ci") == 0  # nothing a workstation wrote
        builds.workspace(f"{pt.persona.slug}-2")
        assert builds.hits("ci") == 0
        assert builds.hits("bob") == len(builds.targets)  # everything CI wrote


@pytest.mark.bazel
def test_bazel_all_makes_workstation_results_cis_hits(tmp_path: Path, pt: Acme) -> None:
    accepts(pt.persona, "all")
    with bazel_in(tmp_path) as bazel:
        builds = Builds(bazel, pt)
        builds.workspace(pt.persona.slug)
        assert builds.hits("bob") == 0
        assert builds.hits("ci") == len(builds.targets)


@pytest.mark.bazel
def test_bazel_confirmed_takes_a_result_once_ci_or_a_second_user_wrote_it(tmp_path: Path, pt: Acme) -> None:
    accepts(pt.persona, "confirmed")
    with bazel_in(tmp_path) as bazel:
        builds = Builds(bazel, pt)
        # Confirmed by CI: its own identical results replace the workstation's.
        builds.workspace(f"{pt.persona.slug}-1")
        assert builds.hits("bob") == 0
        assert builds.hits("ci") == 0
        assert builds.hits("ci") == len(builds.targets)
        assert not ResultConflict.objects.filter(tenant=pt.persona.tenant).exists()

        # Confirmed by a second user, who builds without taking bob's results.
        builds.workspace(f"{pt.persona.slug}-2")
        assert builds.hits("bob") == 0
        assert builds.hits("ci", "--noremote_upload_local_results") == 0
        assert builds.hits("carol", "--noremote_accept_cached") == 0
        assert builds.hits("ci") == len(builds.targets)


@pytest.mark.bazel
def test_bazel_a_different_ci_result_wins_and_the_conflict_is_listed(tmp_path: Path, pt: Acme) -> None:
    accepts(pt.persona, "confirmed")
    flavour = tmp_path / "flavour.txt"  # outside the workspace: Bazel does not hash it
    with bazel_in(tmp_path) as bazel:
        builds = Builds(bazel, pt)
        bazel.workspace.joinpath("WORKSPACE").write_text('workspace(name = "e2e")\n')
        bazel.workspace.joinpath("BUILD").write_text(
            f'genrule(name = "leaky", outs = ["leaky.txt"], '
            f'cmd = "echo {pt.persona.slug} > $@ && cat {flavour} >> $@")\n'
        )
        builds.targets = ["//:leaky"]
        flavour.write_text("built on a workstation\n")
        assert builds.hits("bob") == 0
        flavour.write_text("built by CI\n")
        assert builds.hits("ci") == 0
        assert builds.hits("bob") == 1  # CI's result, for the workstation too
        assert "built by CI" in (bazel.workspace / "bazel-bin" / "leaky.txt").read_text()

    conflict = ResultConflict.objects.get(tenant=pt.persona.tenant)
    assert conflict.workstation_users == pt.persona.developer
    assert conflict.ci_user == pt.persona.admin
    (path,) = conflict.ci_outputs["outputs"]
    assert path.endswith("/bin/leaky.txt")
    assert conflict.workstation_outputs["outputs"][path] != conflict.ci_outputs["outputs"][path]
    page = PageClient()
    page.force_login(pt.persona.tenant.memberships.get(user__username=pt.persona.admin).user)
    html = page.get(f"/t/{pt.persona.slug}/cache-mode/").content.decode()
    assert conflict.action_hash[:12] in html and "leaky.txt" in html


def test_the_entry_header_round_trips_and_a_reader_decides_from_it_alone() -> None:
    payload = re_pb2.ActionResult(exit_code=3).SerializeToString()
    voters = ((7, 70), (8, 0))
    data = ac_entries.encode(ac_entries.EXTERNAL, voters, payload, written_at=1.5)
    entry = ac_entries.decode(data)
    assert entry == ac_entries.Entry(ac_entries.EXTERNAL, voters, 1.5, payload)
    assert ac_entries.payload_for(data, 0) == payload
    assert ac_entries.payload_for(data, 2) == payload
    assert ac_entries.payload_for(data, 3) is None
    assert ac_entries.payload_for(data, ac_entries.NEVER) is None
    ci = ac_entries.encode(ac_entries.INTERNAL, (), payload)
    assert ac_entries.payload_for(ci, ac_entries.NEVER) == payload
    assert ac_entries.is_legacy(payload) and ac_entries.decode(payload) is None
    assert ac_entries.with_voter(voters, ac_entries.Author(True, 7, 71)) == ((8, 0), (7, 71))
    assert ac_entries.without_token(voters, 70) == ((8, 0),)
    with pytest.raises(ValueError):
        ac_entries.payload_for(data[:6], 0)
