"""The server process itself: several processes on one port, each honouring revocation."""

import os
import time

import grpc

from portal import tokens
from tests.support.reapi_client import Client, digest
from tests.support.servers import ReapiServer
from tests.support.tenants import Persona


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (FileNotFoundError, ProcessLookupError):
                continue
    return found


def test_processes_share_a_port_and_a_revocation_reaches_every_one(acme: Persona) -> None:
    issued = tokens.issue(acme.tenant, acme.admin, name="multi")
    with ReapiServer("external", processes=2) as server:
        assert server.proc is not None
        assert len(children_of(server.proc.pid)) == 2
        # Separate channels (subchannels) land on either process through SO_REUSEPORT.
        clients = [Client(server.channel(), issued.secret) for _ in range(8)]
        blob = os.urandom(1000)
        clients[0].upload(blob)
        for c in clients:
            assert c.missing(digest(blob)) == []
            c.get_capabilities()
        tokens.revoke(issued.token)
        deadline = time.monotonic() + 5
        refused: set[int] = set()
        while len(refused) < len(clients):
            assert time.monotonic() < deadline, "a server process still served a revoked token after 5 s"
            for i, c in enumerate(clients):
                try:
                    c.get_capabilities()
                except grpc.RpcError as err:
                    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
                    refused.add(i)
            time.sleep(0.1)
