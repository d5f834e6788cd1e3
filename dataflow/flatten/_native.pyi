"""Type stub of the Rust extension (flatten_rs/src/lib.rs, flatten_rs/src/py_writer.rs).

Reached only through ``dataflow.flatten.native()``: ``dataflow.flatten`` (the flattener) and
``dataflow.engines`` (the writer) are the facades that know how the extension is called.
"""

from typing import Any

def version() -> str: ...
def flatten_batch(messages: list[bytes], max_bytes: int, unset: Any) -> list[tuple]: ...
def writer_columns() -> list[str]: ...

class TlsHandshakeError(ConnectionError):
    """The TLS handshake with the nodes failed; waiting does not fix it."""

class Writer:
    """Connects once at construction: ``ConnectionError`` when unreachable,
    ``TlsHandshakeError`` when TLS fails, ``PermissionError`` when the credentials are
    refused, ``ValueError((file, detail))`` when a TLS file ("ca", "cert" or "key") cannot be
    used, ``RuntimeError`` on a setup mistake (missing table)."""

    def __init__(
        self,
        *,
        hosts: list[str],
        port: int,
        keyspace: str,
        table: str,
        username: str | None = None,
        password: str | None = None,
        local_dc: str | None = None,
        consistency: str = "LOCAL_QUORUM",
        max_in_flight: int = 64,
        max_bytes: int = 1048576,
        offset_us: int = 0,
        connect_timeout_s: float = 10.0,
        threads: int = 2,
        tls: bool = False,
        tls_ca_file: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
        tls_check_hostname: bool = True,
    ) -> None: ...
    def submit(
        self, values: list[bytes | None], timestamps: list[int], clock_us: int
    ) -> tuple[int, list[tuple[int, str, str]], int]:
        """``(ticket, [(index, reason, detail)], invalid_dates)``."""
    def take(self, ticket: int) -> tuple[float, float, list[tuple[int, str]]] | None:
        """``(submitted_ms, done_at_ms, [(index, detail)])`` once the ticket is done."""
    def wait(self, tickets: list[int], timeout_s: float) -> bool: ...
    def take_stats(self) -> dict[str, Any]: ...
    def in_flight(self) -> int: ...
    def load_preflattened(self, values: list[bytes | None], clock_us: int) -> tuple[float, int]: ...
    def close(self) -> None: ...
