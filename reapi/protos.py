"""The REAPI v2 messages (Action, Command, Directory, ActionResult…) for code outside reapi/.

A worker builds and reads these messages but serves no RPC: it takes them from here, so that
nothing under workers/ reaches into reapi/gen, whose *_grpc modules belong to the server's edge.
"""

from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

__all__ = ["re_pb2"]
