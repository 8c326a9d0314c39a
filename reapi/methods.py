"""The REAPI methods this server answers, by what they need: the scope a credential must hold,
and the thread pool a call runs on (reapi/call_pools.py), which follows from how long it takes.
"""

CAS = "/build.bazel.remote.execution.v2.ContentAddressableStorage/"
AC = "/build.bazel.remote.execution.v2.ActionCache/"
BS = "/google.bytestream.ByteStream/"
EXE = "/build.bazel.remote.execution.v2.Execution/"
OPS = "/google.longrunning.Operations/"
FETCH = "/build.bazel.remote.asset.v1.Fetch/"
PUSH = "/build.bazel.remote.asset.v1.Push/"

# The scope each method needs. None: any valid credential. Methods absent from this table
# (health checks, reflection) need no credential.
METHOD_SCOPES: dict[str, str | None] = {
    "/build.bazel.remote.execution.v2.Capabilities/GetCapabilities": None,
    CAS + "FindMissingBlobs": "cas:read",
    CAS + "BatchReadBlobs": "cas:read",
    CAS + "GetTree": "cas:read",
    CAS + "BatchUpdateBlobs": "cas:write",
    BS + "Read": "cas:read",
    BS + "Write": "cas:write",
    BS + "QueryWriteStatus": "cas:write",
    AC + "GetActionResult": "ac:read",
    AC + "UpdateActionResult": "ac:write",
    EXE + "Execute": "execute",
    EXE + "WaitExecution": "execute",
    OPS + "GetOperation": "execute",
    OPS + "ListOperations": "execute",
    OPS + "CancelOperation": "execute",
    OPS + "WaitOperation": "execute",
    OPS + "DeleteOperation": "execute",
    # Remote Asset API: a cached asset is a CAS read; a download (checked again in
    # asset_service: cas:write) and a push write the CAS.
    FETCH + "FetchBlob": "cas:read",
    FETCH + "FetchDirectory": "cas:read",
    PUSH + "PushBlob": "cas:write",
    PUSH + "PushDirectory": "cas:write",
}
PUBLIC_PREFIXES = ("/grpc.health.v1.Health/",)


# Short unary reads that touch local storage once or not at all (BatchReadBlobs opens 100
# files, and would rather wait on a slow disk in parallel). Given a few threads of their own (see
# reapi.call_pools), they run back to back on busy threads: in the main pool, sized for streams
# that wait for minutes, every call woke an idle thread and put one to sleep, and the GIL
# went round many threads (GetActionResult: 2,000-2,300 calls/s with 32 threads, 2,450-2,700
# with 4-8, on 2 cores under load).
QUICK_METHODS = frozenset(
    {
        "/build.bazel.remote.execution.v2.Capabilities/GetCapabilities",
        CAS + "FindMissingBlobs",
        AC + "GetActionResult",
    }
)


# Calls that wait for an operation for as long as the action runs (minutes): Bazel keeps one
# open per remote action, so with --jobs=200 two hundred of them. On a pool of their own, with
# a thread each (they hold no database connection while they wait: execution_service.follow),
# they never take the threads that cache calls need.
WAITING_METHODS = frozenset(
    {
        "/build.bazel.remote.execution.v2.Execution/Execute",
        "/build.bazel.remote.execution.v2.Execution/WaitExecution",
        "/google.longrunning.Operations/WaitOperation",
        # Waits for a download (minutes for a large archive); its lookups run on db_threads.
        FETCH + "FetchBlob",
    }
)


# Calls that hold their thread for as long as the client keeps them open: REAPI_TOKEN_STREAMS
# caps how many of them one credential has running (WaitOperation is unary, but waits as long).
STREAM_METHODS = WAITING_METHODS | {BS + "Read", BS + "Write"}

HEALTH = "/grpc.health.v1.Health/"
