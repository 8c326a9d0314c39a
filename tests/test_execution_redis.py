"""Remote execution on Redis with two pools on this machine: `x86-64`, and a second worker
started as `arm64` standing in for an arm64 machine. A worker killed mid-action loses nothing."""

import uuid
from collections.abc import Iterator

import pytest
from django.contrib.auth import get_user_model
from django.test import Client as PageClient
from django.test import override_settings

from tests.support.execution_fixtures import (
    COMPLETED,
    EXEC_ENV,
    ActionSpec,
    WorkerProcess,
    aux_pool,
    execute,
    in_thread,
    pid_alive,
    pids_running,
    redis_env,
    response,
    stage,
    wait_for,
)
from tests.support.reapi_client import Client
from tests.support.servers import ReapiServer
from tests.support.tenants import Persona
from workers.models import EXECUTING, Operation


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return {**EXEC_ENV, **redis_env()}


@pytest.fixture(scope="module")
def server(env: dict[str, str]) -> Iterator[ReapiServer]:
    with ReapiServer("external", env=env) as s:
        yield s


@pytest.fixture(scope="module")
def x86(env: dict[str, str], server: ReapiServer) -> Iterator[WorkerProcess]:
    with WorkerProcess("external", "x86-64", env) as w:
        yield w


@pytest.fixture(scope="module")
def arm(env: dict[str, str], server: ReapiServer) -> Iterator[WorkerProcess]:
    with WorkerProcess("external", "arm64", env) as w:
        yield w


@pytest.fixture
def client(server: ReapiServer, acme: Persona) -> Iterator[Client]:
    with server.channel() as channel:
        yield Client(channel, acme.pat())


def test_actions_asking_for_arm64_run_only_on_the_arm64_worker(
    client: Client, x86: WorkerProcess, arm: WorkerProcess
) -> None:
    platforms = [
        {"Arch": "arm64"},
        {"cpu": "aarch64"},
        {"Pool": "arm64"},
        {},
        {"Arch": "x86-64"},
        {"cpu": "k8"},
    ]
    specs = [
        ActionSpec(["/bin/sh", "-c", f"echo {i} > o"], output_files=["o"], platform=p)
        for i, p in enumerate(platforms * 2)
    ]
    joins = [in_thread(execute, client, spec.upload(client)) for spec in specs]
    for spec, join in zip(specs, joins, strict=True):
        result = response(join()[-1]).result
        assert result.exit_code == 0
        wants_arm = spec.platform in platforms[:3]
        expected = arm if wants_arm else x86
        assert result.execution_metadata.worker == expected.name, spec.platform
        assert aux_pool(result) == ("arm64" if wants_arm else "x86-64")


def test_a_worker_killed_mid_action_loses_nothing_and_the_action_ends_once(
    client: Client, env: dict[str, str], x86: WorkerProcess
) -> None:
    marker = f"3.{uuid.uuid4().int % 10**9}"  # a sleep length no other process has
    script = f"sleep {marker}; echo built > o"
    action = ActionSpec(["/bin/sh", "-c", script], output_files=["o"]).upload(client)
    with WorkerProcess("external", "x86-64", env) as second:
        join = in_thread(execute, client, action)
        op = wait_for(
            lambda: (
                Operation.objects.filter(action_hash=action.hash, stage=EXECUTING).exclude(worker="").first()
            )
        )
        wait_for(lambda: any(c.startswith("sleep ") for c in pids_running(marker).values()))
        first_run = pids_running(marker)
        victim, survivor = (x86, second) if op.worker == x86.name else (second, x86)
        assert op.worker == victim.name
        victim.kill()
        # The killed worker's command dies with it: its sandbox does not outlive the worker.
        wait_for(lambda: not any(pid_alive(p) for p in first_run), timeout=10)
        updates = join()
        if victim is x86:  # keep the module's worker for the other tests
            x86.start()

    done = [u for u in updates if u.done]
    assert len(done) == 1 and stage(updates[-1]) == COMPLETED
    result = response(updates[-1]).result
    assert result.exit_code == 0
    assert client.read(result.output_files[0].digest) == b"built\n"
    assert result.execution_metadata.worker == survivor.name
    op.refresh_from_db()
    assert op.done and op.attempt == 2 and op.worker == survivor.name
    # The action cache holds exactly what the operation answered.
    assert client.get_action_result(action) == result


def fleet_html(page: PageClient) -> str:
    # The page renders in this process: give it the pools the server and workers run with.
    with override_settings(REAPI_POOLS={"external": ["x86-64", "arm64"], "internal": ["x86-64"]}):
        reply = page.get("/workers/")
    assert reply.status_code == 200
    return reply.content.decode()


def test_the_fleet_page_shows_workers_queues_and_failures(
    client: Client, acme: Persona, x86: WorkerProcess, arm: WorkerProcess
) -> None:
    failing = ActionSpec(["/bin/sh", "-c", "exit 7"], salt=b"fleet").upload(client)
    execute(client, failing)
    user = get_user_model().objects.get(username=acme.admin)
    page = PageClient()
    page.force_login(user)
    html = fleet_html(page)
    assert x86.name in html and arm.name in html
    assert 'data-pool="external/arm64"' in html
    assert "exit 7" in html

    # With the arm64 worker gone, an arm64 action waits in its queue, and the page says so.
    arm.stop()
    try:
        stream_join = in_thread(
            execute, client, ActionSpec(["/bin/true"], platform={"Arch": "arm64"}).upload(client)
        )
        wait_for(lambda: Operation.objects.filter(tenant=acme.tenant, pool="arm64", done=False).exists())
        html = fleet_html(page)
        row = html.split('data-pool="external/arm64"', 1)[1].split("</tr>", 1)[0]
        assert "waiting: no worker online" in row
        assert 'class="queued">1</td>' in row
        assert 'class="online">0' in row
    finally:
        arm.start()
    # The restarted worker takes the waiting action.
    assert response(stream_join()[-1]).result.exit_code == 0
    outsider = PageClient()
    assert outsider.get("/workers/").status_code == 302  # log-in first
