"""Real Bazel 4.2.3 against the real server: every build is recorded as an invocation, and each
of its misses is explained against the nearest earlier action with the same outputs, for
remote execution (input files named with both digests) and cache-only builds (--action_env)."""

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from portal import tenancy
from reapi.models import Invocation
from tests.support.bazel import Bazel, bazel_in
from tests.support.execution_fixtures import EXEC_ENV, WorkerProcess
from tests.support.polling import wait_for
from tests.support.servers import ReapiServer, manage
from tests.support.tenants import Persona

pytestmark = pytest.mark.bazel

ENV = {**EXEC_ENV, "REAPI_USAGE_FLUSH_SECONDS": "1"}


@pytest.fixture(scope="module")
def server() -> Iterator[ReapiServer]:
    with ReapiServer("external", env=ENV) as s:
        yield s


@pytest.fixture(scope="module")
def ci_server() -> Iterator[ReapiServer]:
    with ReapiServer("internal", env=ENV) as s:
        yield s


@pytest.fixture(scope="module")
def worker(server: ReapiServer) -> Iterator[WorkerProcess]:
    with WorkerProcess("external", "x86-64", ENV, concurrency=4) as w:
        yield w


@pytest.fixture(scope="module")
def bazel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bazel]:
    with bazel_in(tmp_path_factory.mktemp("bazel")) as b:
        yield b


def write_workspace(root: Path, salt: str) -> None:
    """Three genrules, each over a source file of its own, and one that joins them."""
    (root / "WORKSPACE").write_text('workspace(name = "invocations")\n')
    rules = []
    for name in ("a", "b", "c"):
        (root / f"{name}.src").write_text(f"{name} {salt}\n")
        rules.append(
            f'genrule(name = "{name}", srcs = ["{name}.src"], outs = ["{name}.txt"], '
            f'cmd = "cat $< > $@ && echo $$X >> $@")\n'
        )
    rules.append(
        'genrule(name = "all", srcs = [":a", ":b", ":c"], outs = ["all.txt"], cmd = "cat $(SRCS) > $@")\n'
    )
    (root / "BUILD").write_text("".join(rules))


def build(bazel: Bazel, *flags: str) -> str:
    invocation = str(uuid.uuid4())
    result = bazel.build(f"--invocation_id={invocation}", *flags)
    assert result.returncode == 0, result.output
    return invocation


def recorded(slug: str, invocation: str, misses: int, executed: int = 0) -> Invocation:
    """The invocation once the server's flushes have saved all its misses and remote runs
    (a remote run is counted after its miss, maybe in the next flush)."""
    return wait_for(
        lambda: Invocation.objects.filter(
            tenant__slug=slug, invocation_id=invocation, misses=misses, executed=executed
        ).first()
    )


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_a_remote_build_shows_its_one_miss_and_explain_names_the_changed_file(
    bazel: Bazel, server: ReapiServer, worker: WorkerProcess, acme: Persona
) -> None:
    pat = acme.pat(acme.developer)
    write_workspace(bazel.workspace, acme.slug)
    flags = (
        f"--remote_executor={server.url}",
        f"--remote_header=X-Aspect={pat}",
        "--spawn_strategy=remote",
        "--action_env=X=same",
    )
    first = build(bazel, *flags)
    recorded(acme.slug, first, misses=4, executed=4)

    bazel.clean()
    old, new = f"b {acme.slug}\n", f"b {acme.slug} changed\n"
    (bazel.workspace / "b.src").write_text(new)
    second = build(bazel, *flags)
    row = recorded(acme.slug, second, misses=2, executed=2)  # b.txt and all.txt, which joins it
    assert row.hits == 2
    assert row.bytes_up > len(new) and row.bytes_down > 0  # the changed inputs up, outputs down
    assert row.username == acme.developer and row.cluster == "external"
    assert set(row.missed.values_list("target_id", flat=True)) == {"//:b", "//:all"}

    out = manage("explain", second, "--tenant", acme.slug).stdout
    assert f"input file changed: b.src: {sha(old)}/{len(old)} → {sha(new)}/{len(new)}" in out, out
    assert "output: bazel-out/k8-fastbuild/bin/b.txt" in out, out
    assert f"of invocation {first}" in out, out

    listed = manage("invocations", "--tenant", acme.slug).stdout.splitlines()
    assert [line.split()[0] for line in listed] == [second, first]


def test_a_cache_only_build_with_another_action_env_is_explained_by_that_variable(
    bazel: Bazel, server: ReapiServer, acme: Persona
) -> None:
    pat = acme.pat(acme.developer)
    write_workspace(bazel.workspace, acme.slug)
    flags = (f"--remote_cache={server.url}", f"--remote_header=X-Aspect={pat}")
    first = build(bazel, *flags, "--action_env=X=alpha")
    recorded(acme.slug, first, misses=4)

    bazel.clean()
    second = build(bazel, *flags, "--action_env=X=beta")
    recorded(acme.slug, second, misses=4)
    out = manage("explain", second, "--tenant", acme.slug).stdout
    assert out.count("environment variable X changed: alpha → beta") == 4, out
    # all.txt joins outputs that changed with X; cache-only builds store no input trees.
    assert out.count("inputs differ; the input trees are not stored") == 1, out

    # One action at a time, by its digest.
    action = Invocation.objects.get(invocation_id=second).missed.get(target_id="//:a").action_hash
    one = manage("explain", second, "--tenant", acme.slug, "--action", action).stdout
    assert one.count("environment variable X changed") == 1, one
    assert "output: bazel-out/k8-fastbuild/bin/a.txt" in one, one


def test_a_workstations_misses_in_pass_through_are_explained_against_cis_actions(
    bazel: Bazel, server: ReapiServer, ci_server: ReapiServer, acme: Persona
) -> None:
    tenancy.set_cache_mode(acme.tenant, "pass-through")
    write_workspace(bazel.workspace, acme.slug)
    ci = (f"--remote_cache={ci_server.url}", f"--remote_header=X-Aspect={acme.pat(acme.admin)}")
    workstation = (f"--remote_cache={server.url}", f"--remote_header=X-Aspect={acme.pat(acme.developer)}")
    ci_build = build(bazel, *ci, "--action_env=X=ci")
    assert recorded(acme.slug, ci_build, misses=4).cluster == "internal"

    bazel.clean()
    earlier = build(bazel, *workstation, "--action_env=X=laptop")
    recorded(acme.slug, earlier, misses=4)
    bazel.clean()
    latest = build(bazel, *workstation, "--action_env=X=laptop2")
    row = recorded(acme.slug, latest, misses=4)
    assert (row.cluster, row.username) == ("external", acme.developer)

    # CI's action is preferred to the workstation's own more recent one.
    out = manage("explain", latest, "--tenant", acme.slug).stdout
    assert out.count(f"of invocation {ci_build} (internal)") == 4, out
    assert out.count("environment variable X changed: ci → laptop2") == 4, out
