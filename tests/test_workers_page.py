"""The Workers pages seen from a tenant, over a real server and a real `manage.py worker`: a
failed action names Bazel's target and mnemonic and shows the end of its stderr (escaped, from
the tenant's own CAS, bounded), completed actions are listed, and another tenant's action is 404.
"""

import uuid
from collections.abc import Iterator

import pytest
from django.contrib.auth import get_user_model
from django.test import Client as PageClient

from portal import action_detail
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from tests.support.execution_fixtures import EXEC_ENV, ActionSpec, WorkerProcess, execution, response
from tests.support.reapi_client import Client
from tests.support.servers import ReapiServer
from tests.support.tenants import Persona
from workers.models import Operation

METADATA_KEY = "build.bazel.remote.execution.v2.requestmetadata-bin"


@pytest.fixture(scope="module")
def server() -> Iterator[ReapiServer]:
    with ReapiServer("external", env=EXEC_ENV) as s:
        yield s


@pytest.fixture(scope="module")
def worker(server: ReapiServer) -> Iterator[WorkerProcess]:
    with WorkerProcess("external", "x86-64", EXEC_ENV, concurrency=2) as w:
        yield w


def run_as_bazel(client: Client, spec: ActionSpec, mnemonic: str, target: str) -> re_pb2.ExecuteResponse:
    """Execute with the RequestMetadata Bazel 5 and later send."""
    meta = re_pb2.RequestMetadata(
        tool_details=re_pb2.ToolDetails(tool_name="bazel", tool_version="7.0.0"),
        tool_invocation_id=str(uuid.uuid4()),
        action_mnemonic=mnemonic,
        target_id=target,
    )
    action = spec.upload(client)
    updates = list(
        execution(client).Execute(
            re_pb2.ExecuteRequest(action_digest=action, skip_cache_lookup=True),
            metadata=(*client.metadata, (METADATA_KEY, meta.SerializeToString())),
            timeout=60,
        )
    )
    return response(updates[-1])


def page_client(username: str) -> PageClient:
    client = PageClient()
    client.force_login(get_user_model().objects.get(username=username))
    return client


def test_a_failed_action_shows_its_target_and_the_end_of_its_stderr(
    server: ReapiServer, worker: WorkerProcess, acme: Persona, globex: Persona
) -> None:
    # 300 lines of warnings, then the error that matters, with markup and colour in it.
    script = (
        'i=0; while [ $i -lt 300 ]; do echo "src/main.cc:$i: warning: unused variable" >&2; '
        "i=$((i+1)); done; printf '\\033[31merror:\\033[0m <b>undefined</b> reference to main\\n' >&2; exit 3"
    )
    with server.channel() as channel:
        client = Client(channel, acme.pat())
        failed = run_as_bazel(client, ActionSpec(["/bin/sh", "-c", script]), "CppLink", "//app:server")
        ok = run_as_bazel(
            client, ActionSpec(["/bin/sh", "-c", "echo fine"], salt=b"ok"), "Genrule", "//app:ok"
        )
    assert failed.result.exit_code == 3 and ok.result.exit_code == 0
    op = Operation.objects.filter(tenant=acme.tenant, exit_code=3).latest("id")

    bob = page_client(acme.developer or "")
    fleet = bob.get(f"/t/{acme.slug}/workers/")
    assert fleet.status_code == 200
    body = fleet.content.decode()
    assert 'aria-label="Tenant"' in body, "the tenant's navigation stays"
    failures = body.split('id="failures"', 1)[1].split("</table>", 1)[0]
    assert "CppLink //app:server" in failures and "exit 3" in failures
    assert f"/t/{acme.slug}/workers/{op.name}/" in failures
    completed = body.split('id="completed"', 1)[1].split("</table>", 1)[0]
    assert "Genrule //app:ok" in completed and "exit 0" in completed
    assert "0 minutes ago" not in body

    detail = bob.get(f"/t/{acme.slug}/workers/{op.name}/")
    assert detail.status_code == 200
    page = detail.content.decode()
    tail = page.split('id="stderr-tail"', 1)[1].split("</pre>", 1)[0]
    assert "&lt;b&gt;undefined&lt;/b&gt; reference to main" in tail and "<b>" not in tail
    assert "\x1b" not in tail and "[31m" not in tail
    assert "warning: unused variable" in tail and "src/main.cc:0:" not in tail, "only the tail"
    assert len(tail.encode()) <= action_detail.STDERR_TAIL_BYTES + 200
    assert "CppLink //app:server" in page and "/bin/sh -c" in page

    outsider = page_client(globex.admin)
    assert outsider.get(f"/t/{acme.slug}/workers/{op.name}/").status_code == 404
    assert outsider.get(f"/t/{globex.slug}/workers/{op.name}/").status_code == 404
    assert op.name not in outsider.get(f"/t/{globex.slug}/workers/").content.decode()


def test_an_outcome_reads_as_people_say_it() -> None:
    assert action_detail.what(Operation(requested_by={})) == ""
    assert action_detail.outcome(Operation(done=True, exit_code=0, cached=True)) == "cached result"
    assert action_detail.outcome(Operation(done=True, exit_code=2, message="killed: memory limit 4 GiB")) == (
        "exit 2: killed: memory limit 4 GiB"
    )
