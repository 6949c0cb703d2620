"""Lets tritonclient.grpc and MLServer be imported in one process.

Both register the V2 protocol's messages (protobuf package `inference`) in
protobuf's default descriptor pool, and a process cannot hold both copies. The
tests drive servers with tritonclient and also import MLServer to call runtimes
directly, so in the test process MLServer's generated module is pointed at
tritonclient's, which defines the same messages (a superset). Servers under test
run in their own processes and are untouched.
"""

import sys


def share_v2_protos() -> None:
    if "mlserver.grpc.dataplane_pb2" in sys.modules:
        return
    from tritonclient.grpc import service_pb2

    sys.modules["mlserver.grpc.dataplane_pb2"] = service_pb2
