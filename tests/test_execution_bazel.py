"""Real Bazel 4.2.3 with --remote_executor: every action runs on the workers, on the embedded
(filesystem) broker, in the pool its platform asks for; then everything is a cache hit."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from tests.support.bazel import Bazel, bazel_in
from tests.support.execution_fixtures import EXEC_ENV, WorkerProcess
from tests.support.servers import ReapiServer
from tests.support.tenants import Persona
from workers.models import Operation

pytestmark = pytest.mark.bazel

RULES = 50
ARM_EVERY = 5  # every fifth genrule asks for Arch=arm64 through exec_properties


@pytest.fixture(scope="module")
def server() -> Iterator[ReapiServer]:
    with ReapiServer("external", env=EXEC_ENV) as s:
        yield s


@pytest.fixture(scope="module")
def x86(server: ReapiServer) -> Iterator[WorkerProcess]:
    with WorkerProcess("external", "x86-64", EXEC_ENV, concurrency=4) as w:
        yield w


@pytest.fixture(scope="module")
def arm(server: ReapiServer) -> Iterator[WorkerProcess]:
    with WorkerProcess("external", "arm64", EXEC_ENV, concurrency=2) as w:
        yield w


@pytest.fixture(scope="module")
def bazel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bazel]:
    # One Bazel server for the module: starting one costs seconds.
    with bazel_in(tmp_path_factory.mktemp("bazel")) as b:
        yield b


def write_workspace(root: Path, salt: str) -> tuple[int, dict[str, bytes]]:
    """RULES genrules (some for arm64) and aggregators over them; returns the action count
    and the expected content of every output."""
    (root / "WORKSPACE").write_text('workspace(name = "remote_exec")\n')
    rules, expected = [], {}
    for i in range(RULES):
        props = '\n    exec_properties = {"Arch": "arm64"},' if i % ARM_EVERY == 0 else ""
        rules.append(
            f'genrule(\n    name = "gen{i}",\n    outs = ["gen{i}.txt"],\n'
            f'    cmd = "echo rule {i} {salt} > $@ && seq 1 {i * 40} >> $@",{props}\n)\n'
        )
        expected[f"gen{i}.txt"] = (
            f"rule {i} {salt}\n".encode() + "".join(f"{n}\n" for n in range(1, i * 40 + 1)).encode()
        )
    groups = [list(range(g, min(g + 10, RULES))) for g in range(0, RULES, 10)]
    for g, members in enumerate(groups):
        srcs = ", ".join(f'":gen{i}"' for i in members)
        rules.append(
            f'genrule(\n    name = "cat{g}",\n    srcs = [{srcs}],\n    outs = ["cat{g}.txt"],\n'
            f'    cmd = "cat $(SRCS) > $@",\n)\n'
        )
        expected[f"cat{g}.txt"] = b"".join(expected[f"gen{i}.txt"] for i in members)
    (root / "BUILD").write_text("\n".join(rules))
    return RULES + len(groups), expected


def remote_flags(server: ReapiServer, pat: str) -> tuple[str, ...]:
    return (
        f"--remote_executor={server.url}",
        f"--remote_header=X-Aspect={pat}",
        "--spawn_strategy=remote",
        "--jobs=64",  # more actions in flight than the server has handler threads (32)
    )


def test_bazel_runs_every_action_remotely_in_its_pool_then_hits_the_cache(
    bazel: Bazel, server: ReapiServer, x86: WorkerProcess, arm: WorkerProcess, acme: Persona
) -> None:
    pat = acme.pat(acme.developer)
    actions, expected = write_workspace(bazel.workspace, salt=acme.slug)
    first = bazel.build(*remote_flags(server, pat))
    assert first.returncode == 0, first.output
    assert first.processes.get("remote") == actions, first.output
    assert set(first.processes) <= {"remote", "internal"}, first.output
    assert bazel.outputs() == expected

    ran = Operation.objects.filter(tenant=acme.tenant, done=True, cached=False)
    assert ran.count() == actions
    for op in ran:
        result = re_pb2.ExecuteResponse.FromString(bytes(op.response or b"")).result
        assert result.exit_code == 0
        assert result.execution_metadata.worker == (arm.name if op.pool == "arm64" else x86.name)
    assert ran.filter(pool="arm64").count() == len(range(0, RULES, ARM_EVERY))

    bazel.clean()
    second = bazel.build(*remote_flags(server, pat))
    assert second.returncode == 0, second.output
    assert second.processes.get("remote cache hit") == actions, second.output
    assert bazel.outputs() == expected


def test_bazel_prints_why_an_unknown_pool_is_refused(
    bazel: Bazel, server: ReapiServer, x86: WorkerProcess, acme: Persona
) -> None:
    pat = acme.pat(acme.developer)
    (bazel.workspace / "WORKSPACE").touch()
    (bazel.workspace / "bad").mkdir()
    (bazel.workspace / "bad" / "BUILD").write_text(
        f'genrule(name = "g", outs = ["g.txt"], cmd = "echo {acme.slug} > $@")\n'
    )
    result = bazel.build(
        *remote_flags(server, pat), "--remote_default_exec_properties=Pool=gpu-farm", targets=("//bad:g",)
    )
    assert result.returncode != 0, result.output
    assert "FAILED_PRECONDITION" in result.output, result.output
    assert "Pool=gpu-farm" in result.output, result.output
