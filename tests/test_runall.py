"""`make run`'s command: every part of the service starts, serves, and stops together."""

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.execution_fixtures import ActionSpec, run
from tests.support.polling import wait_for
from tests.support.reapi_client import Client, digest
from tests.support.servers import ROOT, free_port, manage


def start_runall() -> tuple[subprocess.Popen[str], dict[str, str], tuple[int, int, int], list[str]]:
    """runall on free ports, read up to its welcome: (process, env, ports, lines printed)."""
    portal, external, internal = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "REAPI_EXTERNAL_URL": f"grpc://127.0.0.1:{external}",
        "REAPI_INTERNAL_URL": f"grpc://127.0.0.1:{internal}",
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "runall", "--portal", f"127.0.0.1:{portal}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "Stop everything" in line:
            break
    return proc, env, (portal, external, internal), lines


def assert_nothing_serves(ports: tuple[int, ...]) -> None:
    for port in ports:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            try:
                health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
                raise AssertionError(f"port {port} still serves after runall stopped")
            except grpc.RpcError as err:
                assert err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def descendants(pid: int) -> set[int]:
    """Every live process below `pid`, from /proc's parent links."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def test_runall_serves_the_portal_and_both_clusters_then_stops_cleanly() -> None:
    proc, env, (portal, external, internal), lines = start_runall()
    try:
        text = "".join(lines)
        assert f"http://127.0.0.1:{portal}/" in text, text
        assert f"grpc://127.0.0.1:{external}" in text and "token issue" in text, text
        assert "remote_cache" in text
        with urllib.request.urlopen(f"http://127.0.0.1:{portal}/login/", timeout=10) as reply:
            assert reply.status == 200
            assert reply.headers["Server"].startswith("gunicorn"), reply.headers["Server"]
            assert "frame-ancestors 'none'" in reply.headers["Content-Security-Policy"]
            stylesheet = re.search(r"/static/portal/portal\.[0-9a-f]{12}\.css", reply.read().decode())
        # DEBUG is off, and the stylesheet is served all the same: named by its content's hash,
        # cacheable for ever, and compressed for a client that accepts it.
        assert stylesheet, "the page names no hashed stylesheet"
        request = urllib.request.Request(
            f"http://127.0.0.1:{portal}{stylesheet.group(0)}", headers={"Accept-Encoding": "gzip"}
        )
        with urllib.request.urlopen(request, timeout=10) as css:
            assert css.status == 200 and css.headers["Content-Type"].startswith("text/css")
            assert "immutable" in css.headers["Cache-Control"]
            assert css.headers["Content-Encoding"] == "gzip"
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{portal}/no-such-page/", timeout=10)
            raise AssertionError("a missing page was served")
        except urllib.error.HTTPError as missing:
            assert missing.code == 404
            assert "URLconf" not in missing.read().decode()
        for port in (external, internal):
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert status.status == health_pb2.HealthCheckResponse.SERVING
        workers = [line for line in lines if line.startswith("worker ")]
        assert any("external" in w for w in workers) and any("internal" in w for w in workers), text
        follow_the_welcome(text, external, env)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    # Every child went with it: nothing listens any more.
    assert_nothing_serves((portal, external, internal))


def test_runalls_children_die_with_it_when_it_is_killed_outright() -> None:
    proc, _env, ports, lines = start_runall()
    try:
        assert any("Stop everything" in line for line in lines), "".join(lines)
        children = descendants(proc.pid)
        assert len(children) >= 6, children  # portal, two servers, two workers, maintenance
        proc.kill()  # SIGKILL: runall runs no handler
        proc.wait()
        wait_for(lambda: not descendants_alive(children), timeout=60, interval=0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
    assert_nothing_serves(ports)


def descendants_alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    alive.add(pid)
        except OSError:
            continue
    return alive


def follow_the_welcome(text: str, external: int, env: dict[str, str]) -> None:
    """Do what the welcome says, as a new user would: the printed commands make a tenant, a
    member and a token; with that token the external endpoint serves the cache, and an action
    runs on the worker runall started."""
    slug, user = f"run{uuid.uuid4().hex[:8]}", f"alice-{uuid.uuid4().hex[:8]}"
    printed = [
        line.split("manage.py ", 1)[1]
        for line in text.splitlines()
        if line.startswith("  .venv/bin/python manage.py ")
    ]
    assert [command.split()[:2] for command in printed] == [
        ["tenant", "create"],
        ["tenant", "add-member"],
        ["token", "issue"],
    ]
    for command in printed:
        done = manage(*command.replace("acme", slug).replace("alice", user).split())
    pat = done.stdout.strip().splitlines()[-1]
    assert pat.startswith("aw_pat_"), done.stdout
    ready_made = text.split("ready-made:", 1)[1].split("\n", 1)[0].split("manage.py ", 1)[1]
    assert "add --execution to that command" in text
    ready_made = ready_made.replace("acme", slug).replace("aw_pat_…", pat) + " --execution"
    snippet = manage(*ready_made.split(), env=env).stdout
    assert f"--remote_executor=grpc://127.0.0.1:{external}" in snippet, snippet

    with grpc.insecure_channel(f"127.0.0.1:{external}") as channel:
        client = Client(channel, pat)
        blob = os.urandom(1000)
        client.upload(blob)
        assert client.missing(digest(blob)) == []
        reply = run(client, ActionSpec(["/bin/sh", "-c", f"echo {slug} > out"], output_files=["out"]))
        assert reply.status.code == 0 and reply.result.exit_code == 0, reply
        (out,) = reply.result.output_files
        assert client.read(out.digest) == f"{slug}\n".encode()
