"""Remote actions run sandboxed: a probe built by real Bazel reports what an action can reach,
and hostile actions (fork bomb, memory hog, huge writers, symlink escapes) end with a clear
message while their worker serves the next action."""

import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client as PageClient
from django.test import override_settings

from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from reapi.gen.google.longrunning import operations_pb2
from tests.support.bazel import Bazel, bazel_in
from tests.support.execution_fixtures import (
    EXEC_ENV,
    ActionSpec,
    Link,
    WorkerProcess,
    execute,
    execute_stream,
    in_thread,
    ops,
    pid_alive,
    pids_running,
    response,
    run,
)
from tests.support.polling import wait_for
from tests.support.reapi_client import Client
from tests.support.servers import ReapiServer, manage
from tests.support.tenants import Persona
from workers import cgroups, mntns, sandbox

SECRET = f"sandbox-secret-{uuid.uuid4().hex}"
SANDBOX_ENV = {
    **EXEC_ENV,
    "REAPI_POOLS_EXTERNAL": (
        "x86-64,net:x86-64:network,tight:x86-64:memory=256M:pids=64:file-size=64M:output=128M,"
        "unsandboxed:x86-64,ahead:x86-64"
    ),
    # Every worker and server process carries this: no action may see it.
    "PROBE_SECRET": SECRET,
}
OK_STATUS, INVALID_ARGUMENT, DEADLINE_EXCEEDED, FAILED_PRECONDITION = 0, 3, 4, 9


@pytest.fixture(scope="module")
def server() -> Iterator[ReapiServer]:
    with ReapiServer("external", env=SANDBOX_ENV) as s:
        yield s


@pytest.fixture(scope="module")
def worker(server: ReapiServer) -> Iterator[WorkerProcess]:
    with WorkerProcess("external", "x86-64", SANDBOX_ENV, concurrency=2) as w:
        yield w


@pytest.fixture(scope="module")
def net_worker(server: ReapiServer) -> Iterator[WorkerProcess]:
    with WorkerProcess("external", "net", SANDBOX_ENV, concurrency=1) as w:
        yield w


@pytest.fixture(scope="module")
def tight_worker(server: ReapiServer) -> Iterator[WorkerProcess]:
    with WorkerProcess("external", "tight", SANDBOX_ENV, concurrency=1) as w:
        yield w


@pytest.fixture
def client(server: ReapiServer, acme: Persona) -> Iterator[Client]:
    with server.channel() as channel:
        yield Client(channel, acme.pat())


# --- what an action can reach, through real Bazel ---------------------------------------------

PROBE = r"""#!/bin/bash
# Reports what this action can reach, one fact per line.
data_dir="$1"; database="$2"; port="$3"; marker="$4"
echo "uid=$(id -u)"
echo "gid=$(id -g)"
seen=0
for f in /proc/[0-9]*/environ; do
  if tr '\0' '\n' < "$f" 2>/dev/null | grep -q -e "$marker" -e '^DATABASE_URL=' -e '^DATA_DIR=' -e '^CELERY_BROKER_URL='; then
    seen=$((seen + 1))
  fi
done
echo "worker_env_seen=$seen"
if test -e "$data_dir"; then echo "data_dir=visible"; else echo "data_dir=absent"; fi
if test -e "$database"; then echo "database=visible"; else echo "database=absent"; fi
if ls /run/postgresql /var/run/postgresql /run/redis >/dev/null 2>&1; then echo "sockets=visible"; else echo "sockets=absent"; fi
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "tcp=open"; else echo "tcp=refused"; fi
written=""
for p in "/usr/probe-$marker" "/etc/probe-$marker" "/probe-$marker" "/var/tmp/probe-$marker" "$data_dir/probe-$marker"; do
  if (echo x > "$p") 2>/dev/null; then written="$written $p"; fi
done
echo "written_outside=${written:-none}"
if (echo x > "/tmp/probe-$marker") 2>/dev/null; then echo "tmp=writable"; else echo "tmp=read-only"; fi
echo "processes=$(cat /proc/[0-9]*/comm 2>/dev/null | sort | tr '\n' ',')"
echo "hostname=$(cat /proc/sys/kernel/hostname)"
echo "shadow=$(head -c 1 /etc/shadow 2>/dev/null | wc -c)"
"""


def probe_workspace(root: Path, server: ReapiServer, marker: str) -> None:
    database = settings.DATABASES["default"]["NAME"]
    args = f"{os.environ['DATA_DIR']} {database} {server.port} {marker}"
    (root / "WORKSPACE").write_text('workspace(name = "probe")\n')
    (root / "probe.sh").write_text(PROBE)
    (root / "BUILD").write_text(
        f'genrule(name = "probe", srcs = ["probe.sh"], outs = ["probe.txt"],\n'
        f'    cmd = "bash $(location probe.sh) {args} > $@")\n'
        f'genrule(name = "probe_net", srcs = ["probe.sh"], outs = ["probe_net.txt"],\n'
        f'    cmd = "bash $(location probe.sh) {args} > $@",\n'
        f'    exec_properties = {{"network": "on"}})\n'
    )


def facts(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


@pytest.fixture(scope="module")
def bazel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bazel]:
    with bazel_in(tmp_path_factory.mktemp("bazel")) as b:
        yield b


@pytest.mark.bazel
def test_a_remote_action_reaches_nothing_but_its_own_inputs(
    bazel: Bazel,
    server: ReapiServer,
    worker: WorkerProcess,
    net_worker: WorkerProcess,
    acme: Persona,
) -> None:
    marker = uuid.uuid4().hex
    probe_workspace(bazel.workspace, server, marker)
    built = bazel.build(
        f"--remote_executor={server.url}",
        f"--remote_header=X-Aspect={acme.pat(acme.developer)}",
        "--spawn_strategy=remote",
    )
    assert built.returncode == 0, built.output
    assert built.processes.get("remote") == 2, built.output

    for name, network in (("probe.txt", False), ("probe_net.txt", True)):
        seen = facts(bazel.outputs()[name].decode())
        assert seen["uid"] != "0" and seen["gid"] != "0", seen
        assert seen["worker_env_seen"] == "0", seen
        assert seen["data_dir"] == "absent" and seen["database"] == "absent", seen
        assert seen["sockets"] == "absent", seen  # the database's and broker's unix sockets
        assert seen["written_outside"] == "none", seen
        assert seen["tmp"] == "writable", seen
        assert seen["shadow"] == "0", seen
        assert seen["hostname"] == "sandbox", seen
        # Its own few processes (the sandbox's init, bash and the tools it runs), nothing of
        # the host: no worker, server, Bazel or database.
        processes = [p for p in seen["processes"].split(",") if p]
        assert len(processes) < 12, processes
        assert not {"python", "python3", "java", "celery", "postgres", "redis-server"} & set(processes)
        # The network: none by default; the pool that allows it gives it on request.
        assert seen["tcp"] == ("open" if network else "refused"), (name, seen)
    # Nothing it wrote reached the host.
    assert not Path(f"/tmp/probe-{marker}").exists()
    assert not Path(os.environ["DATA_DIR"], f"probe-{marker}").exists()
    assert not Path(f"/var/tmp/probe-{marker}").exists()


# --- the environment and the file system --------------------------------------------------------


def test_an_action_sees_exactly_its_commands_environment(client: Client, worker: WorkerProcess) -> None:
    env = {"PATH": "/usr/bin:/bin", "GREETING": "hello world", "EMPTY": ""}
    spec = ActionSpec(["/usr/bin/env", "-0"], env=env, salt=uuid.uuid4().bytes)
    reply = run(client, spec)
    assert reply.result.exit_code == 0
    seen = client.read(reply.result.stdout_digest).split(b"\0")
    assert sorted(v.decode() for v in seen if v) == sorted(f"{k}={v}" for k, v in env.items())


def test_files_an_action_creates_belong_to_the_sandbox_user(client: Client, worker: WorkerProcess) -> None:
    spec = ActionSpec(
        ["/bin/sh", "-c", "id -u > o; stat -c %u . >> o"], output_files=["o"], salt=uuid.uuid4().bytes
    )
    reply = run(client, spec)
    assert reply.result.exit_code == 0, reply
    uid, dir_owner = client.read(reply.result.output_files[0].digest).split()
    assert uid == dir_owner == str(settings.REAPI_SANDBOX_UID).encode()


def test_no_process_of_an_action_holds_a_privilege_of_the_worker(
    client: Client, worker: WorkerProcess
) -> None:
    # Seen from the host while the action runs: every process of it, bubblewrap's own outside
    # the namespaces included, has the sandbox's uid and gid (real, effective, saved and file
    # system), no supplementary group and no capability in any set.
    marker = f"300.{uuid.uuid4().int % 10**9}"  # a sleep length no other process has
    action = ActionSpec(["/bin/sh", "-c", f"sleep {marker} & wait; : {marker}"]).upload(client)
    stream = execute_stream(client, action)
    first = next(stream)
    wait_for(lambda: any(c.startswith("sleep ") for c in pids_running(marker).values()))
    statuses = []
    for pid, cmdline in pids_running(marker).items():
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        status = dict(line.split(":\t", 1) for line in lines if ":\t" in line)
        statuses.append((Path(cmdline.split()[0]).name, status))
    ops(client).CancelOperation(
        operations_pb2.CancelOperationRequest(name=first.name), metadata=client.metadata
    )
    list(stream)
    assert {"bwrap", "sh", "sleep"} <= {name for name, _status in statuses}, statuses
    uid, gid = settings.REAPI_SANDBOX_UID, settings.REAPI_SANDBOX_GID
    for name, status in statuses:
        assert status["Uid"].split() == [str(uid)] * 4, (name, status["Uid"])
        assert status["Gid"].split() == [str(gid)] * 4, (name, status["Gid"])
        assert status["Groups"].split() == [], (name, status["Groups"])
        for caps in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
            assert int(status[caps], 16) == 0, (name, caps, status[caps])


def test_an_action_cannot_kill_its_worker(client: Client, worker: WorkerProcess) -> None:
    hostile = ActionSpec(["/bin/sh", "-c", "kill -9 -1; kill -9 $PPID; kill -9 1"], salt=uuid.uuid4().bytes)
    run(client, hostile)
    assert worker.proc is not None and pid_alive(worker.proc.pid)
    after = run(client, ActionSpec(["/bin/sh", "-c", "echo still here"], salt=uuid.uuid4().bytes))
    assert after.result.exit_code == 0
    assert client.read(after.result.stdout_digest) == b"still here\n"


@pytest.mark.parametrize(
    ("target", "output"),
    [("/etc/passwd", "o"), ("../../../../../../etc/passwd", "o"), ("/exec", "o")],
)
def test_a_symlink_output_leading_out_of_the_input_root_is_the_actions_error(
    client: Client, worker: WorkerProcess, target: str, output: str
) -> None:
    spec = ActionSpec(["/bin/ln", "-s", target, output], output_files=[output], salt=uuid.uuid4().bytes)
    reply = run(client, spec)
    assert reply.status.code == INVALID_ARGUMENT, reply
    assert "symlink leading outside the input root" in reply.status.message
    assert "root:" not in reply.status.message
    assert not reply.result.output_files


def test_a_symlink_output_inside_the_input_root_is_followed(client: Client, worker: WorkerProcess) -> None:
    script = "mkdir -p d && echo inside > d/real && ln -s d/real rel && ln -s /exec/root/d/real abs"
    spec = ActionSpec(["/bin/sh", "-c", script], output_files=["abs", "rel"], salt=uuid.uuid4().bytes)
    reply = run(client, spec)
    assert reply.status.code == OK_STATUS, reply
    assert [client.read(f.digest) for f in reply.result.output_files] == [b"inside\n", b"inside\n"]


def test_an_output_directory_reached_through_an_escaping_symlink_is_refused(
    client: Client, worker: WorkerProcess
) -> None:
    spec = ActionSpec(
        ["/bin/sh", "-c", "rmdir out && ln -s /usr out"], output_directories=["out"], salt=uuid.uuid4().bytes
    )
    reply = run(client, spec)
    assert reply.status.code == INVALID_ARGUMENT, reply
    assert "'out'" in reply.status.message


def test_an_input_symlink_cannot_make_the_worker_create_directories_outside(
    client: Client, worker: WorkerProcess, tmp_path: Path
) -> None:
    escape = "../" * 12 + str(tmp_path).lstrip("/")
    spec = ActionSpec(
        ["/bin/true"],
        inputs={"a": Link(escape)},
        output_files=["a/evil/x"],
        salt=uuid.uuid4().bytes,
    )
    reply = run(client, spec)
    assert reply.status.code == INVALID_ARGUMENT, reply
    assert "passes through a symlink" in reply.status.message
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize("path", ["../x", "a/../../x", "/etc/x"])
def test_output_paths_with_dot_dot_are_refused(client: Client, worker: WorkerProcess, path: str) -> None:
    reply = run(client, ActionSpec(["/bin/true"], output_files=[path], salt=uuid.uuid4().bytes))
    assert reply.status.code == INVALID_ARGUMENT, reply
    assert "must be a relative path inside the input root" in reply.status.message


# --- limits: each ends the action with a clear message, and the worker serves on ---------------


def assert_serves_on(client: Client) -> None:
    after = run(
        client,
        ActionSpec(["/bin/sh", "-c", "echo next"], platform={"Pool": "tight"}, salt=uuid.uuid4().bytes),
    )
    assert after.status.code == OK_STATUS and after.result.exit_code == 0, after


def test_a_fork_bomb_ends_at_its_process_limit(client: Client, tight_worker: WorkerProcess) -> None:
    bomb = ActionSpec(
        ["/bin/bash", "-c", "bomb() { bomb | bomb & }; bomb; sleep 30"],
        platform={"Pool": "tight"},
        timeout=6,
        salt=uuid.uuid4().bytes,
    )
    reply = run(client, bomb)
    assert "process limit (64)" in reply.message, reply
    assert reply.status.code == DEADLINE_EXCEEDED or reply.result.exit_code != 0, reply
    assert_serves_on(client)


def test_a_memory_hog_is_killed_at_its_memory_limit(client: Client, tight_worker: WorkerProcess) -> None:
    hog = ActionSpec(
        ["/usr/bin/python3", "-c", "data = bytearray(b'x') * (1 << 30)"],
        platform={"Pool": "tight"},
        salt=uuid.uuid4().bytes,
    )
    reply = run(client, hog)
    assert reply.result.exit_code == 137, reply
    assert reply.message == "killed: memory limit 256 MiB", reply
    assert b"killed: memory limit 256 MiB" in client.read(reply.result.stderr_digest)
    assert_serves_on(client)


def test_a_10_gb_file_stops_at_the_file_size_limit(client: Client, tight_worker: WorkerProcess) -> None:
    writer = ActionSpec(
        ["/bin/sh", "-c", "head -c 10G /dev/zero > big"],
        output_files=["big"],
        platform={"Pool": "tight"},
        salt=uuid.uuid4().bytes,
    )
    reply = run(client, writer)
    assert reply.result.exit_code == 153, reply  # 128 + SIGXFSZ
    assert "file size limit 64 MiB" in reply.message, reply
    assert_serves_on(client)


def test_many_files_stop_at_the_output_limit(client: Client, tight_worker: WorkerProcess) -> None:
    writer = ActionSpec(
        ["/bin/sh", "-c", "for i in $(seq 40); do head -c 50M /dev/zero > f$i; done"],
        platform={"Pool": "tight"},
        salt=uuid.uuid4().bytes,
    )
    reply = run(client, writer)
    assert reply.result.exit_code != 0, reply
    assert "killed: output limit 128 MiB" in reply.message, reply
    assert_serves_on(client)


# --- the network, the worker's start, the portal ------------------------------------------------


def test_network_on_where_the_pool_does_not_allow_it_is_refused_naming_the_property(
    client: Client, worker: WorkerProcess
) -> None:
    action = ActionSpec(
        ["/bin/true"], platform={"Pool": "x86-64", "network": "on"}, salt=uuid.uuid4().bytes
    ).upload(client)
    with pytest.raises(grpc.RpcError) as err:
        execute(client, action)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "network=on" in (err.value.details() or "")


def test_a_worker_that_cannot_sandbox_refuses_to_start(tmp_path: Path) -> None:
    no_bwrap = {**SANDBOX_ENV, "PATH": str(tmp_path)}
    done = manage("worker", "--cluster", "external", "--pool", "x86-64", env=no_bwrap, check=False)
    assert done.returncode != 0
    assert "bubblewrap (bwrap) is not installed" in done.stderr

    hidden = tmp_path / "hidden"
    (hidden / "exec").mkdir(parents=True)
    hidden.chmod(0o700)  # the sandbox's uid cannot reach an action's directory below it
    done = manage(
        "worker",
        "--cluster",
        "external",
        "--pool",
        "x86-64",
        env={**SANDBOX_ENV, "REAPI_EXEC_DIR": str(hidden / "exec")},
        check=False,
    )
    assert done.returncode != 0
    assert "searchable by uid" in done.stderr, done.stderr
    # Its probe's cgroups, kept for a next action that never comes, went with it.
    [refused] = [int(d.name.rsplit("-", 1)[1]) for d in (hidden / "exec").iterdir()]
    assert sandbox_groups(sandbox.group_prefix(refused)) == []


def test_a_worker_that_cannot_build_sandbox_exec_refuses_to_start(tmp_path: Path) -> None:
    # bubblewrap is there, a C compiler is not, and no sandbox-exec was built for this data dir.
    only_bwrap = tmp_path / "bin"
    only_bwrap.mkdir()
    bwrap = shutil.which("bwrap")
    assert bwrap is not None, "bubblewrap must be installed for these tests (make test-deps)"
    (only_bwrap / "bwrap").symlink_to(bwrap)
    env = {**SANDBOX_ENV, "PATH": str(only_bwrap), "DATA_DIR": str(tmp_path / "data")}
    done = manage("worker", "--cluster", "external", "--pool", "x86-64", env=env, check=False)
    assert done.returncode != 0
    assert "no C compiler (cc) to build the sandbox's launcher" in done.stderr, done.stderr
    assert not list((tmp_path / "data").glob("bin/sandbox-exec-*"))


def test_reapi_sandbox_off_runs_unsandboxed_and_warns_on_every_action(
    server: ReapiServer, client: Client
) -> None:
    off = {**SANDBOX_ENV, "REAPI_SANDBOX": "off"}
    # A pool of its own: no sandboxed worker takes the action first.
    with WorkerProcess("external", "unsandboxed", off, concurrency=1) as unsandboxed:
        spec = ActionSpec(
            ["/bin/sh", "-c", "id -u"], platform={"Pool": "unsandboxed"}, salt=uuid.uuid4().bytes
        )
        reply = run(client, spec)
        assert client.read(reply.result.stdout_digest) == f"{os.geteuid()}\n".encode()
        assert "runs UNSANDBOXED (REAPI_SANDBOX=off)" in unsandboxed.log.read_text()


def sandbox_groups(prefix: str) -> list[str]:
    """This host's action cgroups whose names start with `prefix`, under every controller."""
    parents = [Path("/sys/fs/cgroup/memory/reapi-sandbox"), Path("/sys/fs/cgroup/pids/reapi-sandbox")]
    assert all(p.is_dir() for p in parents), "this test needs the workers' cgroup v1 groups here"
    return [group.name for parent in parents for group in parent.glob(f"{prefix}*") if group.is_dir()]


def pids_in(procs: Path) -> list[str]:
    return procs.read_text().split()


def standby_in(prefix: str) -> tuple[str, str] | None:
    """(group, pid) of the one sandbox-exec --standby in the worker's groups, once it has moved
    in, and every other group of the worker empty; None meanwhile."""
    members = {
        name: pids_in(Path("/sys/fs/cgroup/memory/reapi-sandbox", name, "cgroup.procs"))
        for name in set(sandbox_groups(prefix))
    }
    occupied = {name: pids for name, pids in members.items() if pids}
    if len(occupied) != 1:
        return None
    [(name, pids)] = occupied.items()
    assert len(pids) == 1, occupied
    return name, pids[0]


def test_the_next_actions_launch_waits_in_its_cgroups_and_a_stopped_worker_leaves_none(
    server: ReapiServer, client: Client
) -> None:
    # A pool of its own: no other worker takes the actions.
    with WorkerProcess("external", "ahead", SANDBOX_ENV, concurrency=1) as ahead:
        assert ahead.proc is not None
        prefix = sandbox.group_prefix(ahead.proc.pid)
        seen = []
        for _ in range(3):
            spec = ActionSpec(
                ["/bin/sh", "-c", "echo hi"], platform={"Pool": "ahead"}, salt=uuid.uuid4().bytes
            )
            reply = run(client, spec)
            assert reply.result.exit_code == 0 and client.read(reply.result.stdout_digest) == b"hi\n"
            # The next action's sandbox-exec is waiting, in the next action's cgroups; the group
            # of the action that ran is back in the worker's pool, empty.
            group, standby = wait_for(functools.partial(standby_in, prefix))  # once its move is done
            assert "--standby" in Path(f"/proc/{standby}/cmdline").read_bytes().decode(errors="replace")
            groups = sandbox_groups(prefix)
            assert len(groups) == 4, groups  # two groups, each a memory and a pids one
            seen.append((group, sorted(groups)))
        # One action running at a time: its group and the next one's, lent in turn, no new ones.
        assert seen[0][1] == seen[1][1] == seen[2][1], seen
        assert seen[0][0] != seen[1][0] and seen[0][0] == seen[2][0], seen
        holders = netns_holders(ahead.proc.pid)
        assert holders  # the network namespaces it lends its actions
        mount_holders = children_running(ahead.proc.pid, "--mntns")
        assert len(mount_holders) == 1, mount_holders  # the mount namespace its actions start from
    assert sandbox_groups(prefix) == []
    assert not pid_alive(int(standby))
    assert not [pid for pid in holders.values() if pid_alive(pid)]
    assert not [pid for pid in mount_holders if pid_alive(pid)]


# An action the test watches from the host: it waits for SIGUSR1, then does what argv[1] says.
# argv[2] is its marker. It blocks SIGUSR1 and execs itself again with "waiting" as its last
# argument (the mask stays across exec), so a signal the test sends once it sees that is kept
# pending until sigwait takes it.
WATCHED = r"""
import os, signal, sys, time
if sys.argv[-1] != "waiting":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    argv = open("/proc/self/cmdline", "rb").read().split(b"\0")[:-1]
    os.execv(argv[0], argv + [b"waiting"])
signal.sigwait({signal.SIGUSR1})
what = sys.argv[1]
if what == "hog":
    data = bytearray(b"x") * (1 << 30)
elif what == "forks":  # as many processes as the limit lets it start, then they all end
    r, w = os.pipe()
    children = []
    while len(children) < 1000:
        try:
            pid = os.fork()
        except BlockingIOError:
            break
        if pid == 0:
            os.close(w)
            os.read(r, 1)
            os._exit(0)
        children.append(pid)
    os.close(w)
    for pid in children:
        os.waitpid(pid, 0)
    print("forks=%d" % len(children))
elif what == "daemon":  # a process in a session of its own, still running when this one ends
    child = os.fork()
    if child == 0:
        os.setsid()
        os.execv("/bin/sleep", ["sleep", sys.argv[3]])
    while not open("/proc/%d/cmdline" % child, "rb").read().startswith(b"sleep"):
        time.sleep(0.01)
print("done")
"""


def cgroup_of(pid: int) -> str:
    """The name of the memory cgroup a process is in, seen from the host (inside the sandbox, its
    cgroup namespace shows it as /)."""
    lines = [line.split(":", 2) for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()]
    paths = [path for _id, names, path in lines if "memory" in names.split(",")]
    paths += [path for id_, _names, path in lines if id_ == "0"]  # cgroup v2
    return Path(paths[0]).name


def watched_pid(marker: str) -> int | None:
    """The watched action's Python (its command line holds `marker`), once it waits for SIGUSR1."""
    for pid, cmdline in pids_running(marker).items():
        if cmdline.startswith("/usr/bin/python3") and cmdline.split()[-1] == "waiting":
            return pid
    return None


def run_watched(
    client: Client, what: str, *args: str, look: Callable[[int, str], None] | None = None
) -> tuple[str, re_pb2.ExecuteResponse]:
    """Run a WATCHED action on the tight pool: (the name of its cgroup, its response). `look`
    sees its pid and group while it waits."""
    marker = uuid.uuid4().hex
    spec = ActionSpec(["/usr/bin/python3", "-c", WATCHED, what, marker, *args], platform={"Pool": "tight"})
    join = in_thread(run, client, spec)
    pid = wait_for(lambda: watched_pid(marker))
    group = cgroup_of(pid)
    if look is not None:
        look(pid, group)
    os.kill(pid, signal.SIGUSR1)
    return group, join()


def test_an_action_in_a_group_lent_again_is_told_only_of_its_own_limits(
    client: Client, tight_worker: WorkerProcess
) -> None:
    # Two actions that end at a limit, then actions that reach none: a worker running one at a
    # time lends its groups in turn, so the later ones run in the groups of the first two.
    runs = [run_watched(client, what) for what in ("hog", "forks", "ok", "ok", "ok", "ok")]
    (hog_group, hog), (forks_group, forks), later = runs[0], runs[1], runs[2:]
    assert hog.result.exit_code == 137, hog
    assert hog.message == "killed: memory limit 256 MiB", hog
    assert forks.result.exit_code == 0, forks
    # The limit less the action's first four: sandbox-exec, bwrap, bwrap's init and this Python.
    assert client.read(forks.result.stdout_digest) == b"forks=60\ndone\n", forks
    assert forks.message == "it reached its process limit (64): new processes were refused", forks
    for group, reply in later:
        assert reply.status.code == OK_STATUS and reply.result.exit_code == 0, reply
        assert reply.message == "", (group, reply.message)
        assert client.read(reply.result.stdout_digest) == b"done\n"
    later_groups = [group for group, _reply in later]
    assert hog_group in later_groups and forks_group in later_groups, (hog_group, forks_group, later_groups)


def test_a_process_an_action_leaves_running_ends_with_it_and_is_not_in_its_group_after(
    client: Client, tight_worker: WorkerProcess
) -> None:
    daemon = f"300.{uuid.uuid4().int % 10**9}"  # a sleep length no other process has
    group, reply = run_watched(client, "daemon", daemon)
    assert reply.result.exit_code == 0 and client.read(reply.result.stdout_digest) == b"done\n", reply
    # Once the response is in, nothing of the action runs any more.
    assert not pids_running(daemon)
    controllers = cgroups.Controllers.find()
    assert controllers is not None

    def only_its_own(pid: int, its_group: str) -> None:
        if its_group == group:
            members = pids_in(controllers.memory / its_group / "cgroup.procs")
            assert str(pid) in members
            for member in members:
                with contextlib.suppress(OSError):
                    assert daemon not in Path(f"/proc/{member}/cmdline").read_bytes().decode(errors="replace")

    later = [run_watched(client, "ok", look=only_its_own) for _ in range(2)]
    assert group in [g for g, _reply in later]  # the group was lent again
    for _group, after in later:
        assert after.result.exit_code == 0 and after.message == "", after


def launcher_of(pid: int) -> int:
    """The action's sandbox-exec, above bwrap and its init: the first of `pid`'s ancestors run
    with --standby."""
    while pid > 1:
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        if "--standby" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
            return pid
    raise AssertionError("no sandbox-exec above the action")


def test_an_action_is_launched_from_a_mount_namespace_without_the_hosts_other_mounts(
    client: Client, tight_worker: WorkerProcess
) -> None:
    host = mntns.mountpoints(Path("/proc/self/mountinfo").read_text())
    assert "/sys" in host, "this test needs a host with /sys mounted"
    seen: list[list[str]] = []

    def look(pid: int, _group: str) -> None:
        seen.append(mntns.mountpoints(Path(f"/proc/{launcher_of(pid)}/mountinfo").read_text()))

    for _ in range(2):  # one namespace for both
        _group, reply = run_watched(client, "ok", look=look)
        assert reply.result.exit_code == 0 and reply.message == "", reply
    for mounts in seen:
        assert "/" in mounts and "/proc" in mounts and "/dev" in mounts, mounts
        assert not [m for m in mounts if m == "/sys" or m.startswith(("/sys/", "/dev/"))], mounts
        assert len(mounts) < len(host)


def test_the_namespace_actions_start_from_is_made_again_when_a_mount_it_keeps_changes(
    client: Client, tight_worker: WorkerProcess, tmp_path: Path
) -> None:
    assert tight_worker.proc is not None
    exec_dir = Path(settings.REAPI_EXEC_DIR, f"{socket.gethostname()}-{tight_worker.proc.pid}")
    assert exec_dir.is_dir()
    elsewhere, inside = tmp_path / "elsewhere", exec_dir / f"mounted-{uuid.uuid4().hex}"
    seen: list[tuple[list[int], list[str]]] = []

    def look(pid: int, _group: str) -> None:
        launcher = launcher_of(pid)
        seen.append(
            (
                children_running(tight_worker.proc.pid, "--mntns"),  # type: ignore[union-attr]
                mntns.mountpoints(Path(f"/proc/{launcher}/mountinfo").read_text()),
            )
        )

    def run_with_tmpfs_at(path: Path | None) -> None:
        if path is not None:
            path.mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)], check=True)
        try:
            _group, reply = run_watched(client, "ok", look=look)
            assert reply.result.exit_code == 0, reply
        finally:
            if path is not None:
                subprocess.run(["umount", str(path)], check=True)
                path.rmdir()

    run_with_tmpfs_at(None)
    run_with_tmpfs_at(elsewhere)  # a mount no action needs: the same namespace, without it
    run_with_tmpfs_at(inside)  # one in the exec directory: a new namespace, with it
    run_with_tmpfs_at(None)  # gone again: a new one, without it
    # The namespace's own table changing (here by a mount made in it; on a host, a mount of it
    # detached with its mountpoint) makes a new one too.
    [holder] = seen[-1][0]
    subprocess.run(["nsenter", "-t", str(holder), "-m", "mount", "-t", "tmpfs", "tmpfs", "/mnt"], check=True)
    run_with_tmpfs_at(None)
    holders = [holder for holder, _mounts in seen]
    assert all(len(h) == 1 for h in holders), holders
    assert holders[0] == holders[1] != holders[2] != holders[3] != holders[4], holders
    assert str(elsewhere) not in seen[1][1]
    assert str(inside) in seen[2][1] and str(inside) not in seen[3][1]
    assert "/mnt" not in seen[4][1]


def test_a_pooled_group_is_lent_with_each_actions_limits_and_never_with_a_process_counted() -> None:
    controllers = cgroups.Controllers.find()
    assert controllers is not None, "this test needs cgroups the worker can write (root)"
    pool = cgroups.Pool(controllers, f"{sandbox.group_prefix(os.getpid())}test-{uuid.uuid4().hex[:8]}-")
    memory = "memory.max" if controllers.v2 else "memory.limit_in_bytes"
    group = pool.take(256 << 20, 64)
    try:
        assert pool.give_back(group)
        # Up, down and up again: v1 takes memory and memory+swap in the order that keeps one
        # below the other.
        for memory_bytes, max_pids in ((1 << 30, 128), (128 << 20, 32), (512 << 20, 256)):
            again = pool.take(memory_bytes, max_pids)
            assert again.paths == group.paths
            assert int((again.memory_dir / memory).read_text()) == memory_bytes
            memsw = again.memory_dir / "memory.memsw.limit_in_bytes"
            if memsw.exists():
                assert int(memsw.read_text()) == memory_bytes
            assert int((again.pids_dir / "pids.max").read_text()) == max_pids
            assert pool.give_back(again)
        # A process that has exited but is not reaped is out of cgroup.procs and still counted
        # in pids.current: the group comes back, and is not lent again.
        join = 'for f in "$@"; do echo $$ > "$f"; done'
        zombie = subprocess.Popen(["/bin/sh", "-c", join, "sh", *group.procs_files()])
        wait_for(lambda: Path(f"/proc/{zombie.pid}/stat").read_text().split(") ", 1)[1][0] == "Z")
        assert pool.give_back(group)
        fresh = pool.take(256 << 20, 64)
        assert fresh.paths != group.paths
        assert all(not path.exists() for path in group.paths)  # removed, not kept
        zombie.wait()
        assert pool.give_back(fresh)
    finally:
        pool.release()
    assert all(not path.exists() for path in group.paths)
    assert all(not path.exists() for path in fresh.paths)


# What the actions below share: connecting (closing with a reset, SO_LINGER 0, so no connection
# is left in TIME_WAIT), listening, and whether a port is listened on in the namespace, seen
# from /proc/net/tcp without sending a packet.
LOOPBACK = r"""
import os, signal, socket, struct, sys
def connects(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    try:
        s.connect(("127.0.0.1", port))
        return "connected"
    except OSError:
        return "refused"
    finally:
        s.close()
def listener(port=0):
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen()
    return s
def listened(port):
    local = "0100007F:%04X" % port
    rows = [line.split() for line in open("/proc/net/tcp").read().splitlines()[1:]]
    return "listening" if any(row[1] == local and row[3] == "0A" for row in rows) else "none"
print("netns=" + os.readlink("/proc/self/ns/net"))
"""
OWN_LOOPBACK = r"""
own = listener()
print("own=" + connects(own.getsockname()[1]))
"""
LISTEN_FOREVER = (
    LOOPBACK
    + OWN_LOOPBACK
    + r"""
s = listener(int(sys.argv[1]))
while True:
    s.accept()
"""
)
TRY_OTHER = (
    LOOPBACK
    + OWN_LOOPBACK
    + r"""
print("other=" + connects(int(sys.argv[1])))
"""
)
# Leaves a listener on the port in a process of its own session, sending no packet (a
# namespace that carried one is not lent again).
LEAVE_LISTENER = (
    LOOPBACK
    + r"""
port = int(sys.argv[1])
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    s = listener(port)
    os.write(w, b"x")
    while True:
        s.accept()
os.read(r, 1)
print("left=" + listened(int(sys.argv[1])))
"""
)
# Looks for a listener on the port and connects to it, then listens on a second port (the sign
# to the test that it is done) until SIGUSR1.
FIND_LISTENER = (
    LOOPBACK
    + r"""
print("found=" + listened(int(sys.argv[1])))
print("connect=" + connects(int(sys.argv[1])), flush=True)
signal.signal(signal.SIGUSR1, lambda *_: sys.exit(0))
done = listener(int(sys.argv[2]))
while True:
    signal.pause()
"""
)
INTERFACES = (
    LOOPBACK
    + OWN_LOOPBACK
    + r"""
import errno, fcntl
lines = open("/proc/net/dev").read().splitlines()[2:]
print("interfaces=" + ",".join(line.split(":")[0].strip() for line in lines))
try:  # SIOCSIFFLAGS with no flags: `lo` down
    fcntl.ioctl(socket.socket(), 0x8914, struct.pack("16sH22x", b"lo", 0))
    print("lo_down=done")
except OSError as exc:
    print("lo_down=" + errno.errorcode[exc.errno])
"""
)


def any_port() -> int:
    """A port for a listener inside an action's own network namespace, where every port is
    free (tests.support.servers.free_port asks the host's)."""
    return 20000 + uuid.uuid4().int % 20000


def listening_pid(marker: str, port: int) -> int | None:
    """The pid of the action's process (its command line holds `marker`) listening on
    127.0.0.1:`port` in its network namespace, seen from the host."""
    local = f"0100007F:{port:04X}"
    for pid, cmdline in pids_running(marker).items():
        if not cmdline.startswith("/usr/bin/python3"):
            continue
        try:
            table = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
        except OSError:
            continue
        if any(line.split()[1] == local and line.split()[3] == "0A" for line in table):  # LISTEN
            return pid
    return None


def children_running(parent: int, argument: str) -> list[int]:
    """The live child processes of `parent` with `argument` as their first argument."""
    found = []
    for pid, cmdline in pids_running(argument).items():
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == parent and cmdline.split()[1:2] == [argument]:
                found.append(pid)
    return found


def netns_holders(worker_pid: int) -> dict[str, int]:
    """The network namespaces the worker holds for its actions: namespace -> holder pid."""
    found = {}
    for pid, cmdline in pids_running("--netns").items():
        try:
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent == worker_pid and cmdline.split()[1:] == ["--netns"]:
                found[os.readlink(f"/proc/{pid}/ns/net")] = pid
        except (OSError, IndexError, ValueError):
            continue
    return found


def test_two_actions_at_once_cannot_reach_each_other_over_loopback(
    client: Client, worker: WorkerProcess
) -> None:
    port, marker = any_port(), uuid.uuid4().hex
    listening = ActionSpec(["/usr/bin/python3", "-c", LISTEN_FOREVER, str(port), marker]).upload(client)
    stream = execute_stream(client, listening)
    first = next(stream)
    try:
        listener_pid = wait_for(lambda: listening_pid(marker, port))
        other = ActionSpec(["/usr/bin/python3", "-c", TRY_OTHER, str(port)], salt=uuid.uuid4().bytes)
        reply = run(client, other)
        # The listener ran all along: the two ran at once on the worker's two slots.
        assert listening_pid(marker, port) == listener_pid
        listener_netns = os.readlink(f"/proc/{listener_pid}/ns/net")
    finally:
        ops(client).CancelOperation(
            operations_pb2.CancelOperationRequest(name=first.name), metadata=client.metadata
        )
        list(stream)
    assert reply.result.exit_code == 0, client.read(reply.result.stderr_digest)
    seen = facts(client.read(reply.result.stdout_digest).decode())
    assert seen["own"] == "connected", seen  # its own loopback works
    assert seen["other"] == "refused", seen
    assert seen["netns"] != listener_netns
    assert seen["netns"] != os.readlink("/proc/self/ns/net")  # nor the host's


def test_a_listener_an_action_leaves_is_gone_for_the_next_in_its_network_namespace(
    client: Client, net_worker: WorkerProcess
) -> None:
    assert net_worker.proc is not None
    port, done_port = any_port(), any_port() + 1
    for _ in range(2):  # one action after another on a worker running one at a time
        leave = ActionSpec(
            ["/usr/bin/python3", "-c", LEAVE_LISTENER, str(port)],
            platform={"Pool": "net"},
            salt=uuid.uuid4().bytes,
        )
        reply = run(client, leave)
        assert reply.result.exit_code == 0, client.read(reply.result.stderr_digest)
        left = facts(client.read(reply.result.stdout_digest).decode())
        assert left["left"] == "listening", left
        # Its namespace is back with the worker, held by one of its `sandbox-exec --netns`.
        holder = netns_holders(net_worker.proc.pid)[left["netns"]]

        marker = uuid.uuid4().hex
        find = ActionSpec(
            ["/usr/bin/python3", "-c", FIND_LISTENER, str(port), str(done_port), marker],
            platform={"Pool": "net"},
        )
        join = in_thread(run, client, find)
        finder = wait_for(lambda: listening_pid(marker, done_port))  # noqa: B023
        # The same namespace: both hold it now, and a live namespace's number is its own.
        assert pid_alive(holder)
        assert os.readlink(f"/proc/{finder}/ns/net") == os.readlink(f"/proc/{holder}/ns/net") == left["netns"]
        os.kill(finder, signal.SIGUSR1)
        reply = join()
        assert reply.result.exit_code == 0, client.read(reply.result.stderr_digest)
        found = facts(client.read(reply.result.stdout_digest).decode())
        assert (found["found"], found["connect"]) == ("none", "refused"), found


def test_an_action_has_a_working_loopback_and_no_other_interface_it_could_change(
    client: Client, worker: WorkerProcess
) -> None:
    for _ in range(2):  # the second may run where the first tried to take `lo` down
        reply = run(client, ActionSpec(["/usr/bin/python3", "-c", INTERFACES], salt=uuid.uuid4().bytes))
        assert reply.result.exit_code == 0, client.read(reply.result.stderr_digest)
        seen = facts(client.read(reply.result.stdout_digest).decode())
        assert seen["interfaces"] == "lo", seen
        assert seen["own"] == "connected", seen
        assert seen["lo_down"] == "EPERM", seen


def test_the_workers_page_shows_sandboxing_and_network_per_pool(
    worker: WorkerProcess, net_worker: WorkerProcess, acme: Persona
) -> None:
    page = PageClient()
    page.force_login(get_user_model().objects.get(username=acme.admin))
    # The page shows the pools configured where the portal runs: the same as the workers'.
    pools = {"external": SANDBOX_ENV["REAPI_POOLS_EXTERNAL"].split(","), "internal": ["x86-64"]}
    with override_settings(REAPI_POOLS=pools):
        html = page.get("/workers/").content.decode()
    row = lambda pool: html.split(f'data-pool="external/{pool}"', 1)[1].split("</tr>", 1)[0]  # noqa: E731
    assert "sandboxed" in row("x86-64") and "no network" in row("x86-64")
    assert "network on request" in row("net")


def test_a_result_the_action_cache_refuses_is_returned_uncached(
    client: Client, worker: WorkerProcess
) -> None:
    # An output directory holding an absolute symlink: Capabilities disallow those in the cache.
    spec = ActionSpec(
        ["/bin/sh", "-c", "ln -s /usr/bin out/tool"], output_directories=["out"], salt=uuid.uuid4().bytes
    )
    action = spec.upload(client)
    reply = response(execute(client, action)[-1])
    assert reply.status.code == OK_STATUS and reply.result.exit_code == 0, reply
    assert reply.message.startswith("not cached:"), reply
    assert len(reply.result.output_directories) == 1
    with pytest.raises(grpc.RpcError) as err:
        client.get_action_result(action)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
