"""One request end to end, and the loops that find requests."""

from __future__ import annotations

import dataclasses
import datetime as dt
import gc
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
import redis
from cassandra import ConsistencyLevel
from tqdm import tqdm

from dataflow.cassandra_session import connect as cassandra_connect
from dataflow.exhaust import archive, filters, layout, requests, safe, sources, storage
from dataflow.exhaust.report import IST, Counts, Rows, write_csv
from dataflow.exhaust.settings import ExhaustSettings

log = logging.getLogger("dataflow.exhaust")
FOLDER = "program-user-exhaust"


@contextmanager
def young_collections_only() -> Iterator[None]:
    """No full collections by Python's cyclic garbage collector while the rows are read.

    Reading a program's rows creates millions of objects that stay alive, and every full
    collection walks all of them: reading 1M rows took 39 s with them and 21 s without.
    Young collections still free the driver's short-lived cycles. After the read the rows are
    frozen (``gc.freeze``), so the collector works normally and never walks them again.
    """
    thresholds = gc.get_threshold()
    gc.set_threshold(thresholds[0], thresholds[1], 2**31 - 1)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)


class ReportFailed(RuntimeError):
    """A failure meant for ``err_message``: the text is what the requester reads."""


@dataclass
class Worker:
    settings: ExhaustSettings
    progress: bool = True

    def __post_init__(self) -> None:
        self.layout = layout.load(self.settings.model_config)
        self.pg: psycopg.Connection | None = None
        self.cluster = None
        self.session = None
        self.cache = redis.Redis.from_url(
            self.settings.redis_url, socket_timeout=30, socket_connect_timeout=10
        )
        self.store = storage.open_store(self.settings.storage, self.settings.report_store)

    # --- connections -----------------------------------------------------------------

    def postgres(self) -> psycopg.Connection:
        if self.pg is None or self.pg.closed or self.pg.broken:
            self.pg = requests.connect(self.settings.postgres_dsn, self.settings.processing_timeout)
        return self.pg

    def cassandra(self):
        if self.session is None:
            self.cluster, self.session = cassandra_connect(self.settings.cassandra, wait=60)
            sources.add_tuple_profile(
                self.cluster,
                ConsistencyLevel.name_to_value[self.settings.cassandra.cassandra_consistency],
            )
        return self.session

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.shutdown()
        if self.pg is not None:
            self.pg.close()
        self.cache.close()

    # --- work --------------------------------------------------------------------------

    def run_once(self) -> tuple[int, int]:
        """Process pending requests until none is left; returns how many requests succeeded
        and failed (identical requests served by one report count one each)."""
        done = failed = 0
        attempted: set[str] = set()
        while True:
            claim = requests.claim(self.postgres(), attempted)
            if claim is None:
                return done, failed
            attempted.update(claim.all_ids)
            ok, bad = self.process(claim)
            done += ok
            failed += bad

    def process(self, claim: requests.Claim) -> tuple[int, int]:
        """Serve one claim; returns how many of its requests succeeded and failed."""
        conn = self.postgres()
        refused = 0
        for rid in claim.all_ids:
            problem = safe.id_problem(rid)
            if problem is not None:
                # The id would name the report file: refuse it before anything is read.
                one = dataclasses.replace(claim, request_id=rid, duplicates=[])
                requests.fail(conn, one, problem, 0)
                requests.release(conn, one)
                log.warning("request %s: FAILED: %s", safe.shown(rid), problem)
                refused += 1
        if refused:
            good = [rid for rid in claim.all_ids if safe.id_problem(rid) is None]
            if not good:
                return 0, refused
            claim = dataclasses.replace(claim, request_id=good[0], duplicates=good[1:])
        ok = self._serve(claim)
        n = len(claim.all_ids)
        return (n, refused) if ok else (0, refused + n)

    def _serve(self, claim: requests.Claim) -> bool:
        start = time.monotonic()
        twins = f" (+{len(claim.duplicates)} identical)" if claim.duplicates else ""
        log.info("request %s%s: attempt %d", safe.shown(claim.request_id), twins, claim.iteration)
        conn = self.postgres()
        try:
            path, counts = self.build(claim)
            began = time.monotonic()
            # A report the portal cannot fetch is a failed request: the upload is part of it.
            path = self.store.put(path, f"{FOLDER}/{path.name}")
            if isinstance(self.store, storage.CloudStore):
                counts.seconds["upload"] = time.monotonic() - began
        except (ReportFailed, filters.BadRequest, storage.StorageError) as exc:
            millis = int((time.monotonic() - start) * 1000)
            requests.fail(conn, claim, str(exc), millis)
            log.warning("request %s: FAILED: %s", safe.shown(claim.request_id), safe.shown(exc))
            requests.release(conn, claim)
            return False
        finally:
            gc.unfreeze()  # the report's rows, frozen by build(), are garbage now
        millis = int((time.monotonic() - start) * 1000)
        requests.succeed(conn, claim, str(path), millis)
        requests.release(conn, claim)
        log.info(
            "request %s: SUCCESS in %.1f s: %d rows, %d needing consent, %d consenting, "
            "%d not in the user cache, %d undecryptable values -> %s (%s)",
            safe.shown(claim.request_id),
            millis / 1000,
            counts.rows,
            counts.needing_consent,
            counts.consenting,
            counts.missing_in_cache,
            counts.undecryptable,
            path,
            ", ".join(f"{phase} {sec:.1f} s" for phase, sec in counts.seconds.items()),
        )
        return True

    def build(self, claim: requests.Claim):
        if claim.request_data is None or claim.encryption_key is None:
            raise ReportFailed("Not a Valid Request")
        request = filters.parse(claim.request_data)
        s = self.settings
        counts = Counts()
        clock = time.monotonic()

        def lap(phase: str) -> None:
            nonlocal clock
            now = time.monotonic()
            counts.seconds[phase] = now - clock
            clock = now

        try:
            session = self.cassandra()
            rows = Rows(self.layout)
            with young_collections_only():
                for row in sources.enrolments(
                    session,
                    s.cassandra.cassandra_keyspace,
                    s.cassandra.cassandra_table,
                    request.program_id,
                ):
                    if all(p.test(row) for p in request.enrolment):
                        rows.add(row)
            # The rows live until the file is written: later collections need not walk them.
            gc.freeze()
            if not len(rows):
                raise ReportFailed("No Data Found")
            lap("enrolments")
            needing = rows.needing_consent()
            counts.needing_consent = len(needing)
            consents = sources.consents(
                session, s.user_keyspace, request.program_id, needing, request.consent
            )
            lap("consents")
        except ReportFailed:
            raise
        except Exception as exc:  # any driver error becomes one clear line
            log.debug("request %s failed", safe.shown(claim.request_id), exc_info=True)
            raise ReportFailed(
                f"reading the report data failed: {type(exc).__name__}: {str(exc)[:200]}"
            ) from None
        folder = s.report_store / FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        day = dt.datetime.now(IST).strftime("%Y%m%d")
        csv_path = folder / f"{claim.request_id}_{day}.csv"
        if csv_path.resolve().parent != folder.resolve():
            # process() refuses unsafe ids; this keeps a future caller from escaping the store.
            raise ReportFailed(f"refused: the report would leave the report store ({safe.ID_RULE})")
        bar = tqdm(
            total=len(rows),
            unit="row",
            desc=safe.shown(claim.request_id, 40),
            disable=not self.progress,
            mininterval=1,
        )
        last = [0]

        def progress(n: int) -> None:
            bar.update(n - last[0])
            last[0] = n

        # The user cache is read chunk by chunk while the CSV is written; its time is
        # reported apart from the CSV's.
        counts.seconds["user cache"] = 0.0

        def lookup(user_ids: list[str]) -> dict[str, tuple]:
            began = time.monotonic()
            try:
                return sources.pii(self.cache, user_ids)
            finally:
                counts.seconds["user cache"] += time.monotonic() - began

        try:
            write_csv(csv_path, rows, consents, lookup, s.salt, counts, progress)
            bar.update(len(rows) - last[0])
            bar.close()
            lap("csv")
            counts.seconds["csv"] -= counts.seconds["user cache"]
            path = archive.pack(csv_path, s.security_level, claim.encryption_key, s.zip_encryption)
            lap("zip")
        except redis.RedisError as exc:
            csv_path.unlink(missing_ok=True)
            raise ReportFailed(
                f"the user cache (Redis) is unavailable: {type(exc).__name__}"
            ) from None
        except (OSError, archive.ArchiveError) as exc:
            csv_path.unlink(missing_ok=True)
            raise ReportFailed(f"writing the report failed: {exc}") from None
        # Identical requests share this one file: succeed() gives them all its path.
        return path, counts

    def poll(self, interval: float, stop=lambda: False) -> None:
        while not stop():
            try:
                done, failed = self.run_once()
                if done or failed:
                    log.info("processed %d request(s), %d failed", done + failed, failed)
            except psycopg.OperationalError as exc:
                log.warning("PostgreSQL unavailable (%s); retrying in %.0fs", exc, interval)
                self.pg = None
            time.sleep(interval)
