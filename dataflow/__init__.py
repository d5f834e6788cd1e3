"""program-user-info: Kafka -> flatten -> Cassandra, and the User Detail Report exhaust.

``python -m bytewax.run dataflow:flow`` runs the streaming job; the flow is built on first
access so that importing the package (for the flattener or the exhaust) connects to nothing.
"""


def __getattr__(name: str):
    if name == "flow":
        import sys

        from dataflow.config import ConfigError
        from dataflow.flow import build_flow

        try:
            return build_flow()
        except ConfigError as exc:
            print(f"program-user-info: configuration error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        except (RuntimeError, ConnectionError, ImportError) as exc:
            print(f"program-user-info: cannot start: {exc}", file=sys.stderr)
            raise SystemExit(1) from None
    raise AttributeError(f"module 'dataflow' has no attribute {name!r}")
