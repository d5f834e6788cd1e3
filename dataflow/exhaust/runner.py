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
from contextlib import contextmanager, nullcontext
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
from dataflow.exhaust.phases import PhaseTimer
from dataflow.exhaust.report import IST, Counts, Report
from dataflow.exhaust.settings import ExhaustSettings

log = logging.getLogger("dataflow.exhaust")
FOLDER = "program-user-exhaust"


@contextmanager
def young_collections_only() -> Iterator[None]:
    """No full collections by Python's cyclic garbage collector while the rows are read.

    Reading a program's rows creates millions of objects that stay alive, and every full
    collection walks all of them, again and again as the read goes on (the cost is in
    benchmarks/RESULTS.md). Young collections still free the driver's short-lived cycles.
    After the read the rows are frozen (``gc.freeze``), so the collector works normally and
    never walks them again.
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
# The phases of the request's log line, in the order a report goes through them (the waits
# for consents and the user cache happen during the read and the write). A cloud store adds
# "upload".
PHASES = ("enrolments", "consents", "user cache", "csv", "zip")


def _cache_failed(exc: redis.RedisError) -> str:
    return f"the user cache (Redis) failed: {type(exc).__name__}: {str(exc)[:200]}"


@contextmanager
def read_failures(request_id: str) -> Iterator[None]:
    """Any failure of the read as one line for the requester, without a traceback."""
    try:
        yield
    except ReportFailed:
        raise
    except CASSANDRA_AWAY as exc:
        raise StoreUnavailable(
            f"Cassandra stopped answering while the report was read: "
            f"{type(exc).__name__}: {describe_cassandra(exc)[:200]}"
        ) from None
    except redis.RedisError as exc:
        raise ReportFailed(_cache_failed(exc)) from None
    except OSError as exc:
        raise ReportFailed(f"writing the report failed: {exc}") from None
    except Exception as exc:  # any other driver error becomes one clear line
        log.debug("request %s failed", safe.shown(request_id), exc_info=True)
        raise ReportFailed(
            f"reading the report data failed: {type(exc).__name__}: {str(exc)[:200]}"
        ) from None


@contextmanager
def write_failures() -> Iterator[None]:
    """A failure of the CSV or the zip as one line for the requester."""
    try:
        yield
    except redis.RedisError as exc:
        raise ReportFailed(_cache_failed(exc)) from None
    except (OSError, archive.ArchiveError) as exc:
        raise ReportFailed(f"writing the report failed: {exc}") from None


class TimedConsents:
    """A consent reader whose waits for answers not yet in are the consents phase."""

    def __init__(self, reader: sources.ConsentReader, phases: PhaseTimer) -> None:
        # Bound once: it is called for every row that needs consent.
        self.ask = reader.ask
        self._answers = reader.answers
        self._phases = phases

    def answers(self) -> dict[str, sources.Consent]:
        with self._phases.waiting("consents"):
            return self._answers()


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
            path = self._upload(path, counts.phases)
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
            counts.phases.line(),
        )
        return True

    def build(self, claim: job_requests.Claim) -> tuple[Path, Counts]:
        """The request's zip in the report store, and what went into it."""
        request, final = self._checked(claim)
        folder = final.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            # The sorted runs of a large report, the plaintext CSV, and the zip until it is
            # complete live in a folder only this user can enter (mkdtemp makes it 0700),
            # removed whatever happens. It is made inside the store so that the finished zip
            # moves into place by a rename (same file system): no reader sees a partial zip.
            work = Path(tempfile.mkdtemp(prefix=".building-", dir=self.settings.report_store))
        except OSError as exc:
            raise ReportFailed(f"writing the report failed: {exc}") from None
        try:
            return self._build_in(work, claim, request, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _checked(self, claim: job_requests.Claim) -> tuple[filters.Request, Path]:
        """The parsed request and the path of its zip; a request that cannot give a useful
        report is refused here, before anything is read."""
        s = self.settings
        if claim.request_data is None:
            raise ReportFailed("Not a Valid Request")
        # A key no unzip tool takes makes a useless report.
        problem = archive.key_problem(claim.encryption_key, s.security_level, s.zip_encryption)
        if problem is not None:
            raise ReportFailed(problem)
        request = filters.parse(claim.request_data)
        folder = s.report_store / FOLDER
        day = dt.datetime.now(IST).strftime("%Y%m%d")
        final = folder / f"{claim.request_id}_{day}.zip"
        if final.resolve().parent != folder.resolve():
            # process() refuses unsafe ids; this keeps a future caller from escaping the store.
            raise ReportFailed(f"refused: the report would leave the report store ({safe.ID_RULE})")
        return request, final

    def _build_in(
        self, work: Path, claim: job_requests.Claim, request: filters.Request, final: Path
    ) -> tuple[Path, Counts]:
        """The report's steps, each timed as a phase of the request's log line. Consents are
        read while the partition is read, and the user cache while the partition is read
        (when the sort needs personal data) or while the CSV is written: the time spent
        waiting for them is their own phase, not the step's."""
        counts = Counts(phases=PhaseTimer(*PHASES))
        phases = counts.phases
        with phases.step("enrolments"), read_failures(claim.request_id):
            rows = self._read(request, counts, work)
        csv_path = work / f"{final.stem}.csv"
        with phases.step("csv"), write_failures():
            self._write(rows, csv_path, claim.request_id)
        with phases.step("zip"), write_failures():
            self._pack(csv_path, claim.encryption_key, final)
        # Identical requests share this one file: succeed() gives them all its path.
        return final, counts

    def _read(self, request: filters.Request, counts: Counts, work: Path) -> Report:
        """The program's rows that pass the request's filters, with their consents, sorted
        in batches (spilled into ``work`` when there is more than one)."""
        s = self.settings
        session = self.cassandra()
        reader = sources.ConsentReader(
            session, s.user_keyspace, request.program_id, request.consent
        )
        rows = Report(
            self.layout,
            consents=TimedConsents(reader, counts.phases),
            lookup=self.read_cache,
            salt=s.salt,
            counts=counts,
            folder=work,
            limit=s.sort_rows,
        )
        passes = request.enrolment_test(sources.ENROLMENT_FIELDS)
        with young_collections_only():
            for row in sources.enrolments(
                session, s.cassandra.cassandra_keyspace, s.cassandra.cassandra_table,
                request.program_id,
            ):  # fmt: skip
                if passes(row):
                    rows.add(row)
            rows.finish()
        # The rows held (a report that fits in one batch) live until the file is written:
        # later collections need not walk them.
        gc.freeze()
        if not rows.rows:
            raise ReportFailed("No Data Found")
        return rows

    def _write(self, rows: Report, path: Path, request_id: str) -> None:
        """The CSV, with a progress bar on a terminal."""
        bar = tqdm(
            total=rows.rows,
            unit="row",
            desc=safe.shown(request_id, 40),
            disable=not self.progress,
            mininterval=1,
        )
        shown = 0

        def progress(written: int) -> None:
            nonlocal shown
            bar.update(written - shown)
            shown = written

        try:
            rows.write(path, progress)
            bar.update(rows.rows - shown)
        finally:
            bar.close()
        counts = rows.counts
        if counts.encrypted and counts.undecryptable == counts.encrypted:
            raise ReportFailed(
                f"none of the {counts.encrypted} encrypted email and phone values of the "
                "report decrypted: PUI_ENCRYPTION_SALT is not the salt the user cache was "
                "encrypted with (Sunbird's sunbird_encryption_key)"
            )

    def _pack(self, csv_path: Path, key: str | None, final: Path) -> None:
        """The CSV zipped with the request's key, moved into place complete."""
        s = self.settings
        packed = archive.pack(csv_path, s.security_level, key, s.zip_encryption)
        os.chmod(packed, s.report_mode)
        os.replace(packed, final)

    def _upload(self, path: Path, phases: PhaseTimer) -> str:
        """The report where the portal fetches it. A report the portal cannot fetch is a
        failed request: the upload is part of it (a phase of its own with a cloud store)."""
        cloud = isinstance(self.store, storage.CloudStore)
        with phases.step("upload") if cloud else nullcontext():
            return self.store.put(path, f"{FOLDER}/{path.name}")

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
