"""Limits on the gRPC endpoint over real sockets: a request rate and a number of open streams per
credential (RESOURCE_EXHAUSTED with a RetryInfo), and shedding when a process's queue is full
(UNAVAILABLE) while health checks still answer.

Personas: acme's token is the one over its limits; globex's, at the same time, is not.
Tight rates are below one call per second (0.01 = one token per 100 s), so what a test
expects does not depend on how fast this machine makes its calls.
"""

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from portal import ci_identities, rates, tenancy
from portal.models import AuditEvent, Tenant
from reapi.errors import RateLimited
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from reapi.gen.google.bytestream import bytestream_pb2 as bs_pb2
from reapi.gen.google.longrunning import operations_pb2
from reapi.gen.google.rpc import error_details_pb2, status_pb2
from reapi.limits import IDLE_SECONDS, PRUNE_ABOVE, RATE_LIMITED, Caller, Limiter, Tally
from tests.support.bazel import bazel_in, genrule_sizes, write_workspace
from tests.support.execution_fixtures import (
    EXEC_ENV,
    QUEUED,
    ActionSpec,
    execute_stream,
    ops,
    response,
    stage,
)
from tests.support.oidc import OidcProvider
from tests.support.reapi_client import Client, digest
from tests.support.servers import ReapiServer, manage
from tests.support.storage_helpers import within
from tests.support.tenants import Persona
from tests.test_portal_grpc_oidc import JwtClient

CANCELLED = 1


def refusal(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def retry_delay(err: grpc.RpcError) -> float:
    """Seconds of the google.rpc.RetryInfo in the error's grpc-status-details-bin."""
    trailers: Any = err.trailing_metadata() or ()  # type: ignore[attr-defined]
    raw = next((value for key, value in trailers if key == "grpc-status-details-bin"), None)
    assert raw, "no status details"
    status = status_pb2.Status.FromString(raw)
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert status.message == err.details()  # type: ignore[attr-defined]
    info = error_details_pb2.RetryInfo()
    assert len(status.details) == 1 and status.details[0].Unpack(info)
    return float(info.retry_delay.ToNanoseconds()) / 1e9


def code_of(call: Any) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as err:
        return err.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


# --- the token bucket itself, on a clock of our own ----------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_admits_its_burst_then_one_call_per_interval() -> None:
    clock = Clock()
    limiter = Limiter(rates.parse("2:4"), max_streams=10, clock=clock)
    caller = Caller(key="pat:1", tenant="acme", label="token aw_pat_abc…", rate=None)
    for _ in range(4):
        limiter.admit(caller)
    with pytest.raises(RateLimited) as info:
        limiter.admit(caller)
    assert info.value.retry_after == pytest.approx(0.5)
    assert "token aw_pat_abc… is over its rate limit (2 calls/s, bursts of 4)" in info.value.message
    clock.now += 0.5
    limiter.admit(caller)
    with pytest.raises(RateLimited):
        limiter.admit(caller)
    # Another credential has a bucket of its own.
    limiter.admit(Caller(key="pat:2", tenant="acme", label="token aw_pat_def…", rate=None))


def test_refusals_are_counted_by_tenant_and_reason_across_threads() -> None:
    tally = Tally()

    def count(label: str) -> None:
        for _ in range(10_000):
            tally.add(label)

    threads = [threading.Thread(target=count, args=(label,)) for label in ("a", "b", "a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert tally.totals() == {"a": 20_000, "b": 20_000}

    before = RATE_LIMITED.totals()
    limiter = Limiter(rates.parse("1:1"), max_streams=1, clock=Clock())
    caller = Caller(key="pat:1", tenant="counted", label="t", rate=None)
    state = limiter.admit(caller)
    for _ in range(3):
        with pytest.raises(RateLimited):
            limiter.admit(caller)
    limiter.open_stream(state, caller)
    with pytest.raises(RateLimited):
        limiter.open_stream(state, caller)
    after = RATE_LIMITED.totals()
    assert after[("counted", "rate")] == before.get(("counted", "rate"), 0) + 3
    assert after[("counted", "streams")] == before.get(("counted", "streams"), 0) + 1


def test_a_raised_rate_does_not_carry_the_debt_of_the_old_one() -> None:
    clock = Clock()
    limiter = Limiter(rates.parse("1000:1000"), max_streams=10, clock=clock)
    tight = Caller(key="pat:1", tenant="acme", label="t", rate=rates.parse("0.01:3"))
    for _ in range(3):
        limiter.admit(tight)
    with pytest.raises(RateLimited):
        limiter.admit(tight)
    # Under the old rate the next token is 100 s away; under the new one it comes after one
    # interval, as if the new bucket had just been emptied, and a second fills it.
    back_to_default = Caller(key="pat:1", tenant="acme", label="t", rate=None)
    with pytest.raises(RateLimited) as info:
        limiter.admit(back_to_default)
    assert info.value.retry_after == pytest.approx(0.001)
    clock.now += 1.0
    for _ in range(1000):
        limiter.admit(back_to_default)


def test_a_stream_slot_is_held_until_closed_and_refused_past_the_cap() -> None:
    limiter = Limiter(rates.parse("1000"), max_streams=2, clock=Clock())
    caller = Caller(key="pat:1", tenant="acme", label="t", rate=None)
    state = limiter.admit(caller)
    first, second = limiter.open_stream(state, caller), limiter.open_stream(state, caller)
    assert limiter.streams_full(state)
    with pytest.raises(RateLimited) as info:
        limiter.open_stream(state, caller)
    assert info.value.retry_after > 0
    assert state.streams == {first, second}  # the refused one left no ticket behind
    limiter.close_stream(state, first)
    limiter.close_stream(state, first)  # both ends of a stream close it: once counts
    third = limiter.open_stream(state, caller)
    assert state.streams == {second, third}


def test_idle_credentials_are_forgotten_and_one_with_a_stream_open_is_kept() -> None:
    clock = Clock()
    limiter = Limiter(rates.parse("1:1"), max_streams=1, clock=clock)
    callers = [Caller(key=f"pat:{i}", tenant="acme", label="t", rate=None) for i in range(PRUNE_ABOVE)]
    states = [limiter.admit(c) for c in callers]
    limiter.open_stream(states[0], callers[0])
    clock.now += IDLE_SECONDS + 5  # past every bucket's last call by more than IDLE_SECONDS
    limiter.admit(Caller(key="pat:new", tenant="acme", label="t", rate=None))  # the table is full
    kept = limiter.admit(callers[0])
    assert kept is states[0] and limiter.streams_full(kept)  # its open stream still counts
    assert limiter.admit(callers[1]) is not states[1]  # idle: forgotten, a full bucket again


# --- over real sockets -----------------------------------------------------------------------------


def test_a_token_over_its_rate_is_refused_with_retry_info_while_another_tenant_is_served(
    external_server: ReapiServer, acme: Persona, globex: Persona
) -> None:
    tenancy.set_token_rate(acme.tenant, rates.parse("0.01:3"))
    hot, neighbour = acme.pat(), globex.pat()
    blobs = [os.urandom(200) for _ in range(40)]
    neighbour_codes: list[grpc.StatusCode] = []

    def neighbour_calls() -> None:
        client = Client(external_server.channel(), neighbour)
        for blob in blobs:
            neighbour_codes.append(code_of(lambda: client.upload(blob)))  # noqa: B023
            neighbour_codes.append(code_of(lambda: client.missing(digest(blob))))  # noqa: B023

    other = threading.Thread(target=neighbour_calls)
    other.start()
    client = Client(external_server.channel(), hot)
    for _ in range(3):
        assert client.missing(digest(b"x")) == [digest(b"x")]
    refused = [refusal(lambda: client.missing(digest(b"x"))) for _ in range(10)]
    write = refusal(lambda: client.upload(b"refused write"))
    other.join()

    for err in [*refused, write]:
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"token {hot[:13]}… is over its rate limit (0.01 calls/s, bursts of 3)" in (
            err.details() or ""
        )
        assert 0 < retry_delay(err) <= 100
    assert neighbour_codes == [grpc.StatusCode.OK] * 2 * len(blobs)
    # The neighbour's blobs are stored; the refused write stored nothing (another acme token,
    # with a bucket of its own, looks).
    assert Client(external_server.channel(), globex.pat()).missing(*map(digest, blobs)) == []
    second = Client(external_server.channel(), acme.pat())
    assert second.missing(digest(b"refused write")) == [digest(b"refused write")]
    assert f"rate limited: token {hot[:13]}… of tenant {acme.slug}" in external_server.log.read_text()


def test_oidc_tokens_of_one_subject_share_a_bucket(acme: Persona) -> None:
    # A CI job's token is short-lived and each job gets a new one: the limit is the subject's.
    from django.test import override_settings

    with OidcProvider(users=[]) as provider, ReapiServer("internal", env=provider.grpc_env()) as server:
        with override_settings(OIDC_GRPC_ISSUER=provider.issuer):
            ci_identities.add(
                acme.tenant,
                name="ci",
                claim="repository",
                value=f"acme/{acme.slug}",
                user_id=acme.tenant.memberships.get(user__username=acme.admin).user_id,
                scopes="cas:read,ac:read",
            )
        tenancy.set_token_rate(acme.tenant, rates.parse("0.01:2"))

        def token(subject: str) -> Client:
            claims = {"sub": subject, "repository": f"acme/{acme.slug}", "jti": os.urandom(8).hex()}
            return JwtClient(server.channel(), provider.sign(claims))

        main = "repo:acme:ref:refs/heads/main"
        for _ in range(2):
            token(main).get_capabilities()
        err = refusal(token(main).get_capabilities)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"OIDC subject {main!r} is over its rate limit" in (err.details() or "")
        assert retry_delay(err) > 0
        token("repo:acme:ref:refs/heads/release").get_capabilities()  # another subject, its own


def test_a_rate_set_with_the_cli_reaches_a_running_server(
    external_server: ReapiServer, acme: Persona
) -> None:
    client = Client(external_server.channel(), acme.pat())
    for _ in range(20):
        client.get_capabilities()  # the server has the credential, with the default rate

    out = manage("tenant", "rate", acme.slug, "0.01:1")
    assert out.stdout.strip() == f"tenant {acme.slug}: each credential may make 0.01 calls/s, bursts of 1"
    tenant = Tenant.objects.get(pk=acme.tenant.pk)
    assert (tenant.token_rate_per_second, tenant.token_rate_burst) == (0.01, 1)
    event = AuditEvent.objects.get(tenant=tenant, action="tenant.rate")
    assert event.detail == {"old": "default", "new": "0.01:1"}

    def refused() -> grpc.StatusCode | None:
        code = code_of(client.get_capabilities)
        return code if code == grpc.StatusCode.RESOURCE_EXHAUSTED else None

    within(10, refused)  # REAPI_CREDENTIAL_TTL_SECONDS (2) and a call the new bucket admits

    out = manage("tenant", "rate", acme.slug, "default")
    assert out.stdout.strip().endswith("5000 calls/s, bursts of 10000 (the default)")
    assert Tenant.objects.get(pk=acme.tenant.pk).token_rate is None
    within(10, lambda: code_of(client.get_capabilities) == grpc.StatusCode.OK or None)
    for _ in range(20):
        client.get_capabilities()


def test_the_cli_refuses_a_malformed_rate_and_changes_nothing(acme: Persona) -> None:
    for bad, message in (
        ("lots", "is not a rate"),
        ("1e9", "is not a rate"),
        ("0", "above 0"),
        ("5:0", "burst must be from 1"),
        ("-5", "is not a rate"),
    ):
        out = manage("tenant", "rate", acme.slug, bad, check=False)
        assert out.returncode != 0 and message in out.stderr, (bad, out.stderr)
    assert Tenant.objects.get(pk=acme.tenant.pk).token_rate is None
    assert not AuditEvent.objects.filter(tenant=acme.tenant, action="tenant.rate").exists()


def test_a_malformed_rate_setting_stops_start_up_naming_it() -> None:
    out = manage("check", env={"REAPI_TOKEN_RATE": "fast"}, check=False)
    assert out.returncode != 0 and "REAPI_TOKEN_RATE" in out.stderr and "is not a rate" in out.stderr


@pytest.fixture(scope="module")
def two_streams() -> Iterator[ReapiServer]:
    # Two pools, no worker: an arm64 action waits in its queue, and its Execute stream stays open.
    with ReapiServer("external", env={**EXEC_ENV, "REAPI_TOKEN_STREAMS": "2"}) as server:
        yield server


def test_a_token_with_its_streams_all_open_is_refused_another_until_one_ends(
    two_streams: ReapiServer, acme: Persona, globex: Persona
) -> None:
    client = Client(two_streams.channel(), acme.pat())
    neighbour = Client(two_streams.channel(), globex.pat())
    actions = [
        ActionSpec(["/bin/echo", f"held {i}"], platform={"Arch": "arm64"}).upload(client) for i in range(3)
    ]
    blob = os.urandom(300)
    client.upload(blob)
    held = [execute_stream(client, action) for action in actions[:2]]
    names = [next(stream).name for stream in held]  # both handlers run: both slots taken

    third = refusal(lambda: next(execute_stream(client, actions[2])))
    read = refusal(lambda: client.read(digest(blob)))
    for err in (third, read):
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "has 2 streams open, its limit" in (err.details() or "")
        assert retry_delay(err) > 0
    # Calls that are not streams go on, and another tenant's streams are not counted.
    assert client.missing(digest(blob)) == []
    theirs = ActionSpec(["/bin/echo", "theirs"], platform={"Arch": "arm64"}).upload(neighbour)
    their_stream = execute_stream(neighbour, theirs)
    their_first = next(their_stream)
    assert stage(their_first) == QUEUED

    # One stream ends: its slot is free again.
    cancel = operations_pb2.CancelOperationRequest(name=names[0])
    ops(client).CancelOperation(cancel, metadata=client.metadata)
    assert response(list(held[0])[-1]).status.code == CANCELLED
    assert client.read(digest(blob)) == blob
    replacement = execute_stream(client, actions[2])
    names.append(next(replacement).name)

    for name, stream in ((names[1], held[1]), (names[2], replacement)):
        ops(client).CancelOperation(
            operations_pb2.CancelOperationRequest(name=name), metadata=client.metadata
        )
        assert response(list(stream)[-1]).status.code == CANCELLED
    ops(neighbour).CancelOperation(
        operations_pb2.CancelOperationRequest(name=their_first.name), metadata=neighbour.metadata
    )
    assert response(list(their_stream)[-1]).status.code == CANCELLED


def held_write(client: Client, data: bytes, release: threading.Event) -> "grpc.Future":
    """A ByteStream Write that sends its first half, then waits for `release` to send the rest."""
    name = client.upload_resource(digest(data))
    half = len(data) // 2

    def requests() -> Iterator[bs_pb2.WriteRequest]:
        yield bs_pb2.WriteRequest(resource_name=name, write_offset=0, data=data[:half])
        release.wait(120)
        yield bs_pb2.WriteRequest(write_offset=half, data=data[half:], finish_write=True)

    return client.bytestream.Write.future(requests(), metadata=client.metadata, timeout=120)


def test_a_full_queue_is_answered_unavailable_while_health_checks_answer(acme: Persona) -> None:
    # One handler thread, held by an upload that waits for its second half, and room for two
    # calls waiting for it: the probes fill that room, then the next one is shed.
    with ReapiServer("external", env={"REAPI_MAX_QUEUED": "2"}, threads=1) as server:
        client = Client(server.channel(), acme.pat())
        release = threading.Event()
        data = os.urandom(64 * 1024)
        try:
            held = held_write(client, data, release)

            def shed() -> grpc.RpcError | None:
                # A probe that is not shed waits in the queue (and times out there, to be
                # skipped when the thread is free again).
                try:
                    client.cas.BatchReadBlobs(
                        re_pb2.BatchReadBlobsRequest(digests=[digest(b"probe")]),
                        metadata=client.metadata,
                        timeout=1,
                    )
                except grpc.RpcError as err:
                    if err.code() == grpc.StatusCode.UNAVAILABLE:
                        return err
                    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err
                return None  # or served, had it come before the upload took the thread

            err, _ = within(60, shed)
            assert (
                err.details()
                == "this server process is overloaded (its queue of calls is full); retry shortly"
            )
            health = health_pb2_grpc.HealthStub(client.channel)
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == (
                health_pb2.HealthCheckResponse.SERVING
            )
            assert shed() is not None  # still full: the health check did not wait in that queue
        finally:
            release.set()
        # The call that held the thread was not lost: it completes and is stored.
        assert held.result(timeout=120).committed_size == len(data)
        assert client.missing(digest(data)) == []
        assert "overloaded: the main pool's queue is full" in server.log.read_text()


@pytest.mark.bazel
def test_bazel_completes_a_build_under_a_tight_rate_limit(
    tmp_path: Path, external_server: ReapiServer, acme: Persona
) -> None:
    # Bursts of 5 where the build asks for a dozen calls at once: refused, and retried by Bazel
    # with its own backoff (100 ms doubling, 5 retries; it does not read RetryInfo), within
    # which 100 calls/s let them through. (Here: 60-100 refusals over the two builds. At 50/s
    # an upload now and then, on a busy machine, and at 10-25/s several, ran out of retries.)
    tenancy.set_token_rate(acme.tenant, rates.parse("100:5"))
    pat = acme.pat(acme.developer)
    with bazel_in(tmp_path) as bazel:
        targets = write_workspace(bazel.workspace, genrule_sizes(30, largest=64 * 1024), salt=acme.slug)
        flags = (
            f"--remote_cache={external_server.url}",
            f"--remote_header=X-Aspect={pat}",
            "--jobs=8",
            "--verbose_failures",
        )
        first = bazel.build(*flags)
        assert first.returncode == 0, first.output
        assert first.actions == len(targets), first.output
        assert "RESOURCE_EXHAUSTED" not in first.output, first.output  # no call gave up
        log = external_server.log.read_text()
        assert f"rate limited: token {pat[:13]}… of tenant {acme.slug} over its rate limit" in log

        bazel.clean()
        second = bazel.build(*flags)
        assert second.returncode == 0, second.output
        # Every upload of the first build got through: all of it is a hit now.
        assert second.processes.get("remote cache hit") == len(targets), second.output
