"""One request end to end, and the loops that find requests."""

from __future__ import annotations

import dataclasses
import datetime as dt
import gc
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import redis
from cassandra import ConsistencyLevel, OperationTimedOut, ReadTimeout, Unavailable
from cassandra.cluster import NoHostAvailable
from tqdm import tqdm

from dataflow.cassandra_session import connect as cassandra_connect
from dataflow.cassandra_session import describe as describe_cassandra
from dataflow.config import ConfigError
from dataflow.exhaust import archive, filters, job_requests, layout, safe, sources, storage
from dataflow.exhaust.report import IST, Counts, Report
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


class StoreUnavailable(ReportFailed):
    """Cassandra or Redis did not answer within ``PUI_STORE_WAIT``: the request fails by the
    retry rules and the run stops, since the next requests would wait for the same store."""


# Driver errors that mean Cassandra is away, not that the request is wrong.
CASSANDRA_AWAY = (NoHostAvailable, OperationTimedOut, ReadTimeout, Unavailable)


@dataclass
class Worker:
    settings: ExhaustSettings
    progress: bool = True

    def __post_init__(self) -> None:
        self.layout = layout.load(self.settings.model_config)
        shown = {name for _, name in self.layout.columns}
        if not self.settings.salt and shown & {"email", "phone"}:
            # Without it every email and phone would come out blank in a "successful" report.
            raise ConfigError(
                "PUI_ENCRYPTION_SALT is not set: reports show email and phone, which the user "
                "cache holds encrypted with the deployment's salt (Sunbird's "
                "sunbird_encryption_key); set it to that value"
            )
        # Why the last run stopped early (a store was unreachable), or None.
        self.unavailable: str | None = None
        self.pg: psycopg.Connection | None = None
        self.cluster = None
        self.session = None
        self.cache = redis.Redis.from_url(
            self.settings.redis_url, socket_timeout=30, socket_connect_timeout=10
        )
        self.user_cache = sources.UserCache(self.cache)
        self.store = storage.open_store(self.settings.storage, self.settings.report_store)

    # --- connections -----------------------------------------------------------------

    def postgres(self) -> psycopg.Connection:
        if self.pg is None or self.pg.closed or self.pg.broken:
            self.pg = job_requests.connect(
                self.settings.postgres_dsn, self.settings.processing_timeout
            )
        return self.pg

    def cassandra(self):
        if self.session is None:
            try:
                self.cluster, self.session = cassandra_connect(
                    self.settings.cassandra, wait=self.settings.store_wait
                )
            except ConnectionError as exc:
                raise StoreUnavailable(f"{exc} (waited {self.settings.store_wait:g} s)") from None
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
        and failed (identical requests served by one report count one each). When a store
        is unreachable the run stops early and ``self.unavailable`` says why."""
        done = failed = 0
        attempted: set[str] = set()
        self.unavailable = None
        if self.session is None and job_requests.has_pending(self.postgres()):
            try:
                # Connected before any request is claimed: an unreachable Cassandra costs no
                # request an attempt, the requests simply wait for the next run.
                self.cassandra()
            except StoreUnavailable as exc:
                self.unavailable = f"{exc}; no request was taken, they wait for the next run"
                return 0, 0
        while True:
            claim = job_requests.claim(self.postgres(), attempted)
            if claim is None:
                return done, failed
            attempted.update(claim.all_ids)
            ok, bad = self.process(claim)
            done += ok
            failed += bad
            if self.unavailable is not None:
                return done, failed

    def process(self, claim: job_requests.Claim) -> tuple[int, int]:
        """Serve one claim; returns how many of its requests succeeded and failed."""
        conn = self.postgres()
        refused = 0
        for rid in claim.all_ids:
            problem = safe.id_problem(rid)
            if problem is not None:
                # The id would name the report file: refuse it before anything is read.
                one = dataclasses.replace(claim, request_id=rid, duplicates=[])
                job_requests.fail(conn, one, problem, 0)
                job_requests.release(conn, one)
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

    def _serve(self, claim: job_requests.Claim) -> bool:
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
            job_requests.fail(conn, claim, str(exc), millis)
            log.warning("request %s: FAILED: %s", safe.shown(claim.request_id), safe.shown(exc))
            job_requests.release(conn, claim)
            if isinstance(exc, StoreUnavailable | storage.UploadFailed):
                self.unavailable = str(exc)
            return False
        finally:
            gc.unfreeze()  # the report's rows, frozen by build(), are garbage now
        millis = int((time.monotonic() - start) * 1000)
        job_requests.succeed(conn, claim, str(path), millis)
        job_requests.release(conn, claim)
        log.info(
            "request %s: SUCCESS in %.1f s: %d rows, %d needing consent, %d consenting, "
            "%d not in the user cache, %d undecryptable values, %s -> %s (%s)",
            safe.shown(claim.request_id),
            millis / 1000,
            counts.rows,
            counts.needing_consent,
            counts.consenting,
            counts.missing_in_cache,
            counts.undecryptable,
            f"sorted in {counts.runs} runs on disk" if counts.runs else "sorted in memory",
            path,
            ", ".join(f"{phase} {sec:.1f} s" for phase, sec in counts.seconds.items()),
        )
        return True

    def build(self, claim: job_requests.Claim):
        s = self.settings
        if claim.request_data is None:
            raise ReportFailed("Not a Valid Request")
        # Checked before anything is read: a key no unzip tool takes makes a useless report.
        problem = archive.key_problem(claim.encryption_key, s.security_level, s.zip_encryption)
        if problem is not None:
            raise ReportFailed(problem)
        request = filters.parse(claim.request_data)
        folder = s.report_store / FOLDER
        day = dt.datetime.now(IST).strftime("%Y%m%d")
        name = f"{claim.request_id}_{day}"
        final = folder / f"{name}.zip"
        if final.resolve().parent != folder.resolve():
            # process() refuses unsafe ids; this keeps a future caller from escaping the store.
            raise ReportFailed(f"refused: the report would leave the report store ({safe.ID_RULE})")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            # The sorted runs of a large report, the plaintext CSV, and the zip until it is
            # complete live in a folder only this user can enter (mkdtemp makes it 0700),
            # removed whatever happens. It is made inside the store so that the finished zip
            # moves into place by a rename (same file system): no reader sees a partial zip.
            work = Path(tempfile.mkdtemp(prefix=".building-", dir=s.report_store))
        except OSError as exc:
            raise ReportFailed(f"writing the report failed: {exc}") from None
        try:
            return self._build_in(work, claim, request, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _build_in(self, work: Path, claim: job_requests.Claim, request, final: Path):
        s = self.settings
        counts = Counts()
        clock = time.monotonic()

        def lap(phase: str) -> None:
            nonlocal clock
            now = time.monotonic()
            counts.seconds[phase] = now - clock
            clock = now

        # Consents are read while the partition is read, and the user cache chunk by chunk
        # while the CSV is written (or per batch when the sort needs PII); the time spent
        # waiting for them is reported apart from the phases they happen in.
        counts.seconds.update({"enrolments": 0.0, "consents": 0.0, "user cache": 0.0})

        try:
            session = self.cassandra()
            reader = sources.ConsentReader(
                session, s.user_keyspace, request.program_id, request.consent
            )

            class Timed:
                """The wait for consents not yet answered is the consents phase's time."""

                ask = reader.ask

                @staticmethod
                def answers():
                    began = time.monotonic()
                    try:
                        return reader.answers()
                    finally:
                        counts.seconds["consents"] += time.monotonic() - began

            rows = Report(
                self.layout,
                consents=Timed(),
                lookup=self.read_cache,
                salt=s.salt,
                counts=counts,
                folder=work,
                limit=s.sort_rows,
            )
            with young_collections_only():
                for row in sources.enrolments(
                    session,
                    s.cassandra.cassandra_keyspace,
                    s.cassandra.cassandra_table,
                    request.program_id,
                ):
                    if all(p.test(row) for p in request.enrolment):
                        rows.add(row)
                rows.finish()
            # The rows held (a report that fits in one batch) live until the file is
            # written: later collections need not walk them.
            gc.freeze()
            if not rows.rows:
                raise ReportFailed("No Data Found")
            lap("enrolments")
        except ReportFailed:
            raise
        except CASSANDRA_AWAY as exc:
            raise StoreUnavailable(
                f"Cassandra stopped answering while the report was read: "
                f"{type(exc).__name__}: {describe_cassandra(exc)[:200]}"
            ) from None
        except redis.RedisError as exc:
            raise ReportFailed(
                f"the user cache (Redis) failed: {type(exc).__name__}: {str(exc)[:200]}"
            ) from None
        except OSError as exc:
            raise ReportFailed(f"writing the report failed: {exc}") from None
        except Exception as exc:  # any other driver error becomes one clear line
            log.debug("request %s failed", safe.shown(claim.request_id), exc_info=True)
            raise ReportFailed(
                f"reading the report data failed: {type(exc).__name__}: {str(exc)[:200]}"
            ) from None
        # The enrolments phase is the partition read; consents read meanwhile are their own.
        counts.seconds["enrolments"] -= counts.seconds["consents"] + counts.seconds["user cache"]
        cache_before = counts.seconds["user cache"]
        bar = tqdm(
            total=rows.rows,
            unit="row",
            desc=safe.shown(claim.request_id, 40),
            disable=not self.progress,
            mininterval=1,
        )
        last = [0]

        def progress(n: int) -> None:
            bar.update(n - last[0])
            last[0] = n

        try:
            csv_path = work / f"{final.stem}.csv"
            rows.write(csv_path, progress)
            bar.update(rows.rows - last[0])
            bar.close()
            lap("csv")
            counts.seconds["csv"] -= counts.seconds["user cache"] - cache_before
            if counts.encrypted and counts.undecryptable == counts.encrypted:
                raise ReportFailed(
                    f"none of the {counts.encrypted} encrypted email and phone values of the "
                    "report decrypted: PUI_ENCRYPTION_SALT is not the salt the user cache was "
                    "encrypted with (Sunbird's sunbird_encryption_key)"
                )
            packed = archive.pack(
                csv_path, s.security_level, claim.encryption_key, s.zip_encryption
            )
            os.chmod(packed, s.report_mode)
            os.replace(packed, final)
            lap("zip")
        except redis.RedisError as exc:
            raise ReportFailed(
                f"the user cache (Redis) failed: {type(exc).__name__}: {str(exc)[:200]}"
            ) from None
        except (OSError, archive.ArchiveError) as exc:
            raise ReportFailed(f"writing the report failed: {exc}") from None
        finally:
            bar.close()
        # Identical requests share this one file: succeed() gives them all its path.
        return final, counts

    def read_cache(self, user_ids: list[str]) -> dict[str, tuple]:
        """PII from the user cache, waiting up to PUI_STORE_WAIT while Redis is unreachable."""
        deadline = time.monotonic() + self.settings.store_wait
        attempt = 0
        while True:
            try:
                return self.user_cache.pii(user_ids)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                attempt += 1
                left = deadline - time.monotonic()
                reason = f"{type(exc).__name__}: {str(exc)[:200]}"
                if left <= 0:
                    raise StoreUnavailable(
                        f"the user cache (Redis) is not reachable: {reason} "
                        f"(waited {self.settings.store_wait:g} s)"
                    ) from None
                pause = min(2**attempt, 30, left)
                log.warning("Redis not reachable (%s); retrying in %.0fs", reason, pause)
                time.sleep(pause)

    def poll(self, interval: float, stop=lambda: False) -> None:
        while not stop():
            try:
                done, failed = self.run_once()
                if done or failed:
                    log.info("processed %d request(s), %d failed", done + failed, failed)
                if self.unavailable is not None:
                    log.warning("stopped early: %s; retrying in %.0fs", self.unavailable, interval)
            except psycopg.OperationalError as exc:
                log.warning("PostgreSQL unavailable (%s); retrying in %.0fs", exc, interval)
                self.pg = None
            time.sleep(interval)
