"""python -m dataflow.exhaust: build the User Detail Reports that program managers request."""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import uuid

import psycopg

from dataflow.config import ConfigError
from dataflow.exhaust import archive, job_requests, safe, settings
from dataflow.exhaust.layout import LayoutError

DESCRIPTION = """\
Builds the consent-aware "User Detail Report" of a program from PostgreSQL job_request rows
(job_id 'program-user-exhaust'), the Cassandra table the streaming job writes, user consents and
the Redis user cache; writes <store>/program-user-exhaust/<request_id>_<yyyyMMdd>.zip and records
the path (or the reason of a failure) on the request row.

commands:
  run --once           process every pending request, then exit (exit 1 if any failed)
  run                  keep polling for requests every --poll-interval seconds
  submit               add a request (prints its request_id)
  status REQUEST_ID    show a request's row (--url: and a signed download URL of its report)
  init-db              create the job_request table if it does not exist (the only command
                       that creates anything: the others need only SELECT, INSERT, UPDATE on it)
  seed-demo            create what the exhaust reads and fill it with a sample program

configuration: environment variables, listed below (PUI_CASSANDRA_* as for the streaming job);
see docs/exhaust.md.
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dataflow.exhaust",
        description=DESCRIPTION,
        epilog=settings.help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="process requests (once, or polling)")
    run.add_argument("--once", action="store_true", help="process pending requests and exit")
    run.add_argument(
        "--poll-interval", type=float, default=None, help="seconds between polls (default 60)"
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    submit = sub.add_parser("submit", help="add a request for a program's report")
    submit.add_argument("--program-id", required=True)
    submit.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="'NAME OP VALUE'",
        help="an extra program_enrollment filter, one quoted argument: NAME, an operator "
        "(= == != > >= < <=), then the VALUE, which is everything after the operator, spaces "
        "included (surrounding quotes are removed): "
        "--filter \"user_locations['district_id'] = 123\" "
        "--filter 'organisation_name = Karnataka Education'",
    )
    submit.add_argument(
        "--encryption-key",
        required=True,
        help=f"the zip password: AES-256 zips take at most {archive.AES_MAX_BYTES} bytes "
        f"(UTF-8), ZipCrypto ones at most {archive.ZIPCRYPTO_MAX_CHARS} ASCII characters",
    )
    submit.add_argument("--requested-by", required=True)
    submit.add_argument(
        "--request-id", default=None, help=f"default: a random one ({safe.ID_RULE})"
    )
    status = sub.add_parser("status", help="show a request")
    status.add_argument("request_id")
    status.add_argument(
        "--url",
        action="store_true",
        help="print a signed download URL of the report (valid PUI_STORAGE_URL_EXPIRY seconds)",
    )
    sub.add_parser("init-db", help="create the job_request table")
    demo = sub.add_parser(
        "seed-demo",
        help="create the tables the exhaust reads, fill them with a sample program and submit "
        "a request for its report (prints the request_id)",
    )
    demo.add_argument("--program-id", default="demo-program")
    demo.add_argument("--users", type=int, default=20, help="enrolled users (1 to 10000)")
    demo.add_argument("--encryption-key", default="demo-password", help="the demo zip password")
    demo.add_argument("--no-request", action="store_true", help="seed only, submit nothing")
    demo.add_argument(
        "--force",
        action="store_true",
        help="seed even when Cassandra or Redis is not on this machine",
    )
    return p


FILTER = re.compile(r"\s*(?P<name>[^=<>!]*?)\s*(?P<op>==|!=|>=|<=|=|>|<)\s*(?P<value>.*?)\s*")


def parse_filter(text: str) -> dict:
    """``NAME OP VALUE`` -> a filter triple; the value is the rest of the text, spaces and
    operator characters included, without surrounding quotes."""
    match = FILTER.fullmatch(text)
    if match is None or not match["name"] or not match["value"]:
        raise SystemExit(
            f"--filter {text!r}: write NAME OPERATOR VALUE, e.g. "
            "'organisation_name = Karnataka Education' (operators = == != > >= < <=)"
        )
    value = match["value"]
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    return {"name": match["name"], "operator": match["op"], "value": value}


def request_data(program_id: str, extra: list[str]) -> dict:
    table_filters = [{"name": "program_id", "operator": "=", "value": program_id}]
    table_filters += [parse_filter(text) for text in extra]
    return {
        "type": job_requests.JOB_ID,
        "params": {
            "filters": [
                {"table_name": "program_enrollment", "table_filters": table_filters},
                {
                    "table_name": "user_consent",
                    "table_filters": [{"name": "object_id", "operator": "=", "value": program_id}],
                },
            ]
        },
        "title": "User Detail Report",
    }


def _print_signed_url(conf: settings.ExhaustSettings, row: dict) -> int:
    """The URL the portal would give the requester for the report, as the last line."""
    from dataflow.exhaust import storage

    urls = row.get("download_urls") or []
    if row.get("status") != "SUCCESS" or not urls:
        print(f"request {row['request_id']} has no report to download", file=sys.stderr)
        return 1
    try:
        store = storage.open_store(conf.storage, conf.report_store)
        print(store.signed_url(urls[0]))
    except storage.StorageError as exc:
        print(f"program-user-info exhaust: {exc}", file=sys.stderr)
        return 1
    return 0


def _submit(conf: settings.ExhaustSettings, conn: psycopg.Connection, args) -> int:
    rid = args.request_id or uuid.uuid4().hex
    problem = safe.id_problem(rid) or archive.key_problem(
        args.encryption_key, conf.security_level, conf.zip_encryption
    )
    if problem is not None:
        if problem == "Not a Valid Request":
            problem = "the encryption key is empty"
        print(f"program-user-info exhaust: {problem}", file=sys.stderr)
        return 2
    try:
        job_requests.submit(
            conn,
            rid,
            request_data(args.program_id, args.filter),
            args.encryption_key,
            args.requested_by,
        )
    except psycopg.errors.UniqueViolation:
        print(
            f"program-user-info exhaust: a request with request_id {rid} already exists "
            f"(see: python -m dataflow.exhaust status {rid})",
            file=sys.stderr,
        )
        return 1
    print(rid)
    return 0


class DriverLines(logging.Filter):
    """The Cassandra driver's records as one line each, without tracebacks.

    While Cassandra is unreachable the driver logs each failed attempt at ERROR with a full
    traceback; dataflow.cassandra already logs one line per attempt, so that record is
    dropped, and any other driver traceback becomes its exception's one-line summary.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("cassandra"):
            return True
        if record.getMessage().startswith("Control connection failed to connect"):
            return False
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()} {type(exc).__name__}: {str(exc)[:300]}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(DriverLines())
    logging.getLogger("cassandra").setLevel(logging.ERROR)
    try:
        conf = settings.load()
    except ConfigError as exc:
        print(f"program-user-info exhaust: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "run":
            from dataflow.exhaust.runner import Worker

            worker = Worker(conf, progress=not args.no_progress and sys.stderr.isatty())
            try:
                if args.once:
                    done, failed = worker.run_once()
                    log = logging.getLogger("dataflow.exhaust")
                    if worker.unavailable is not None:
                        log.error("stopped: %s", worker.unavailable)
                    log.info("done: %d succeeded, %d failed", done, failed)
                    return 1 if failed or worker.unavailable is not None else 0
                worker.poll(args.poll_interval or conf.poll_interval)
            finally:
                worker.close()
            return 0
        if args.command == "seed-demo":
            from dataflow.exhaust import demo

            return demo.main(conf, args)
        conn = job_requests.connect(conf.postgres_dsn, conf.processing_timeout)
        with conn:
            if args.command == "init-db":
                job_requests.init_db(conn)
            elif args.command == "submit":
                return _submit(conf, conn, args)
            elif args.command == "status":
                row = job_requests.status(conn, args.request_id)
                if row is None:
                    print(f"no request {safe.shown(args.request_id)}", file=sys.stderr)
                    return 1
                print(json.dumps(row, default=str, indent=2))
                if args.url:
                    return _print_signed_url(conf, row)
        return 0
    except ConfigError as exc:
        print(f"program-user-info exhaust: configuration error: {exc}", file=sys.stderr)
        return 2
    except psycopg.errors.UndefinedTable:
        print(
            "program-user-info exhaust: the job_request table does not exist: run "
            "`python -m dataflow.exhaust init-db` once, as a role allowed to create tables",
            file=sys.stderr,
        )
        return 1
    except psycopg.errors.InsufficientPrivilege as exc:
        print(
            f"program-user-info exhaust: PostgreSQL refused: {str(exc).strip().splitlines()[0]} "
            "(the exhaust needs SELECT, INSERT, UPDATE on job_request)",
            file=sys.stderr,
        )
        return 1
    except LayoutError as exc:
        print(f"program-user-info exhaust: {exc}", file=sys.stderr)
        return 2
    except psycopg.OperationalError as exc:
        print(f"program-user-info exhaust: PostgreSQL: {str(exc).strip()[:300]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
