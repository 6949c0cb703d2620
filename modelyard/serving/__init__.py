"""The serving core: `modelyard serve`'s server, data plane, registry and processes.

See docs/architecture.md for the path of a REST call, a gRPC call and a batch chunk
through these modules.
"""
