"""End-to-end benchmark of the streaming job against ceilings measured in the same run.

    .venv/bin/python -m benchmarks.e2e [--events 200000] [--latency-seconds 30]
                                       [--soak-minutes 0] [--configs rust-1,rust-2,python-1]
                                       [--paced-rate EVENTS_PER_S]

Needs the local stack (`scripts/services up`). In order, on one fresh topic of 4 partitions:

1. produce N realistic events (distinct users, 20 programs);
2. Kafka ceiling: one confluent-kafka consumer reading all of them as fast as it can;
3. sink ceilings: the same rows, flattened beforehand, written (a) by the extension's own
   writer (the Rust engine's statements and batching, no flattening inside the clock) with
   32-256 requests in flight: the **native ceiling**, what Cassandra itself absorbs from a
   cheap client; (b) with cassandra-driver as concurrent single-row inserts and as unlogged
   batches per partition key (the Python engine's best case);
4. the dataflow from the earliest offset until the topic is drained and every row is in
   Cassandra, per configuration (engine, number of Bytewax processes): events/s, CPU seconds
   client CPU µs per event (user + system of the dataflow processes) and their peak RSS;
5. latency: the job running, events produced at half the best measured rate (or
   ``--paced-rate``); p50/p99 of produce → write acknowledged by Cassandra, from the job's
   `pui_event_age_seconds`; with ``--soak-minutes`` the same for that long while RSS,
   consumer lag and the latency of each 15 s window are sampled.

Prints Markdown tables and writes the figures to ``benchmarks/results/e2e.json`` (read by
``benchmarks/plot.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

from cassandra.cluster import EXEC_PROFILE_DEFAULT
from cassandra.concurrent import execute_concurrent, execute_concurrent_with_args
from cassandra.query import BatchStatement, BatchType
from confluent_kafka import Consumer, Producer, TopicPartition

from dataflow import config
from dataflow.bootstrap import bootstrap_cassandra
from dataflow.cassandra_session import connect
from dataflow.cassandra_writer import MAX_BATCH_ROWS
from dataflow.flatten import NOT_WRITTEN, engine_function
from dataflow.kafka_admin import ensure_topics
from dataflow.produce import publish
from dataflow.sample_events import generate
from dataflow.schema import insert_cql, program_enrollment_ddl
from dataflow.show import topic_sizes

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PARTITIONS = 4
PROGRAMS = 20


def say(msg: str) -> None:
    print(f"[e2e] {msg}", file=sys.stderr, flush=True)


def job_env(name: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUI_")}
    env.update(
        PUI_ENV=name,
        PUI_CASSANDRA_KEYSPACE=f"ks_{name}",
        PUI_METRICS_PORT="0",
        PUI_LOG_INTERVAL="0",
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


# --- ceilings -------------------------------------------------------------------------------


def kafka_ceiling(settings: config.Settings, expected: int) -> float:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_brokers,
            "group.id": f"{settings.group_id}-ceiling",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "fetch.max.bytes": 50 * 1024 * 1024,
        }
    )
    consumer.assign([TopicPartition(settings.input_topic, p, 0) for p in range(PARTITIONS)])
    got = 0
    start = time.perf_counter()
    while got < expected:
        got += sum(1 for m in consumer.consume(5000, 1.0) if not m.error())
    secs = time.perf_counter() - start
    consumer.close()
    return expected / secs


def flattened_rows(events: list[bytes]) -> list[tuple]:
    rust = engine_function("rust")
    rows = []
    for i in range(0, len(events), 1000):
        for kind, row, ts, _invalid in rust(events[i : i + 1000], 1 << 20, NOT_WRITTEN):
            if kind == "upsert":
                rows.append((*row, ts if ts is not None else 0))
    return rows


NATIVE_CONCURRENCY = (32, 64, 128, 256)


def native_ceilings(settings: config.Settings, events: list[bytes]) -> dict[str, float]:
    """The Rust engine's writer on pre-flattened rows, concurrency swept (a fresh table each)."""
    from dataflow.flatten import native

    cluster, session = connect(settings, wait=60)
    ks = settings.cassandra_keyspace
    out = {}
    try:
        for n in NATIVE_CONCURRENCY:
            session.execute(f"DROP TABLE IF EXISTS {ks}.native", timeout=60)
            session.execute(program_enrollment_ddl(ks, "native"), timeout=60)
            writer = native().Writer(
                hosts=list(settings.cassandra_hosts),
                port=settings.cassandra_port,
                keyspace=ks,
                table="native",
                consistency=settings.cassandra_consistency,
                max_in_flight=n,
            )
            try:
                seconds, rows = writer.load_preflattened(events, time.time_ns() // 1000)
            finally:
                writer.close()
            out[f"native (Rust writer), {n} in flight"] = rows / seconds
            say(f"  {n} in flight: {rows / seconds:,.0f} rows/s")
        session.execute(f"DROP TABLE IF EXISTS {ks}.native", timeout=60)
    finally:
        cluster.shutdown()
    return out


def sink_ceilings(settings: config.Settings, rows: list[tuple]) -> dict[str, float]:
    cluster, session = connect(settings, wait=60)
    # A busy shared box can stall Cassandra for seconds (flushes, schema changes of other
    # runs); a ceiling measures throughput, not the driver's default 10 s patience.
    session.get_execution_profile(EXEC_PROFILE_DEFAULT).request_timeout = 60
    ks = settings.cassandra_keyspace
    session.execute(program_enrollment_ddl(ks, "ceiling"), timeout=60)
    insert = session.prepare(insert_cql(ks, "ceiling") + " USING TIMESTAMP ?")
    out = {}
    try:
        session.execute(f"TRUNCATE {ks}.ceiling", timeout=60)
        start = time.perf_counter()
        for ok, result in execute_concurrent_with_args(
            session, insert, rows, concurrency=128, raise_on_first_error=False
        ):
            if not ok:
                raise RuntimeError(f"ceiling insert failed: {result}")
        out["single-row inserts"] = len(rows) / (time.perf_counter() - start)

        session.execute(f"TRUNCATE {ks}.ceiling", timeout=60)
        by_program = defaultdict(list)
        for row in rows:
            by_program[row[0]].append(row)
        batches = []
        for group in by_program.values():
            for i in range(0, len(group), MAX_BATCH_ROWS):
                batch = BatchStatement(batch_type=BatchType.UNLOGGED)
                for row in group[i : i + MAX_BATCH_ROWS]:
                    batch.add(insert, row)
                batches.append((batch, ()))
        start = time.perf_counter()
        for ok, result in execute_concurrent(
            session, batches, concurrency=64, raise_on_first_error=False
        ):
            if not ok:
                raise RuntimeError(f"ceiling batch failed: {result}")
        out[f"unlogged batches of {MAX_BATCH_ROWS} per partition"] = len(rows) / (
            time.perf_counter() - start
        )
        session.execute(f"DROP TABLE {ks}.ceiling", timeout=60)
    finally:
        cluster.shutdown()
    return out


# --- the dataflow -------------------------------------------------------------------------


def count_rows(settings: config.Settings, table: str, programs: list[str]) -> int:
    cluster, session = connect(settings, wait=60)
    try:
        query = session.prepare(
            f"SELECT COUNT(*) FROM {settings.cassandra_keyspace}.{table} WHERE program_id = ?"
        )
        return sum(session.execute(query, (p,), timeout=60).one()[0] for p in programs)
    finally:
        cluster.shutdown()


def checked_rate(
    settings: config.Settings, table: str, programs: list[str], events: int, label: str, run: dict
) -> None:
    """Check that every event's row is in ``table``; add the row count and events/s (with and
    without start-up) to ``run``."""
    run["rows"] = count_rows(settings, table, programs)
    run["events_per_s"] = events / run["seconds"]
    if "startup_seconds" in run:  # our dataflow's runs time their start-up apart
        run["events_per_s_after_startup"] = events / (run["seconds"] - run["startup_seconds"])
    if run["rows"] != events:
        raise SystemExit(f"{label}: {run['rows']} rows in Cassandra, expected {events}")


def timed_run(
    name: str, engine: str, processes: int, table: str, work: Path, **settings: str
) -> dict:
    """One run of the job from the start of the topic into ``table`` (its own consumer group),
    stopping at the end: run_dataflow's figures."""
    run_env = job_env(
        name,
        **settings,
        PUI_ENGINE=engine,
        PUI_CASSANDRA_TABLE=table,
        PUI_GROUP_ID=f"{name}-{table}",
        PUI_STOP_AT_END="true",
    )
    bootstrap_cassandra(config.load(run_env))
    return run_dataflow(run_env, processes, work / table)


def init_recovery(env: dict[str, str], recovery: Path) -> None:
    """The documented first step of a run with recovery: create the partitions."""
    recovery.mkdir(parents=True)
    subprocess.run(
        [sys.executable, "-m", "bytewax.recovery", str(recovery), str(PARTITIONS)],
        check=True,
        env=env,
        cwd=ROOT,
    )


def run_dataflow(env: dict[str, str], processes: int, recovery: Path) -> dict:
    """Start the job as ``processes`` Bytewax processes and wait until they all exit."""
    init_recovery(env, recovery)
    args = ["-r", str(recovery), "-s", "10", "-b", "60"]
    if processes > 1:
        ports = [free_port() for _ in range(processes)]
        args += ["-a", ";".join(f"127.0.0.1:{p}" for p in ports)]
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "bytewax.run", "dataflow:flow", *args]
            + (["-i", str(i)] if processes > 1 else []),
            env=env,
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    # Start-up (interpreter, imports, checking the topic and table, connecting the sink) is
    # timed apart: it ends when a process logs that its sink is connected.
    opened: list[float] = []
    logs = {p.pid: [] for p in procs}

    def read_log(proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            if not opened and "dataflow.sink: writing to " in line:
                opened.append(time.perf_counter())
            logs[proc.pid].append(line)

    readers = [threading.Thread(target=read_log, args=(p,), daemon=True) for p in procs]
    for reader in readers:
        reader.start()
    # ru_maxrss would count the benchmark's own memory, copied by fork before exec; the
    # process's own high-water mark (VmHWM) is sampled until it exits instead.
    peaks = {p.pid: 0.0 for p in procs}
    usages = {}
    while len(usages) < len(procs):
        for proc in procs:
            if proc.pid in usages:
                continue
            peaks[proc.pid] = max(peaks[proc.pid], hwm_mib(proc.pid))
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                usages[proc.pid] = usage
                if proc.returncode != 0:
                    for reader in readers:
                        reader.join(5)
                    stderr = "".join(logs[proc.pid])
                    raise RuntimeError(f"dataflow exited {proc.returncode}:\n{stderr[-3000:]}")
        time.sleep(0.2)
    end = time.perf_counter()
    cpu = sum(u.ru_utime + u.ru_stime for u in usages.values())
    return {
        "seconds": end - start,
        "startup_seconds": (opened[0] if opened else start) - start,
        "cpu_seconds": cpu,
        "peak_rss_mib": max(peaks.values()),
        "peak_rss_total_mib": sum(peaks.values()),
    }


def proc_status_mib(pid: int, field: str) -> float:
    """A memory figure of /proc/<pid>/status (VmRSS, VmHWM) in MiB; 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def hwm_mib(pid: int) -> float:
    return proc_status_mib(pid, "VmHWM")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- latency and soak ---------------------------------------------------------------------


def scrape_age(port: int) -> list[tuple[float, float]]:
    """Cumulative (upper bound, count) buckets of the job's ``pui_event_age_seconds``."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = []
    for line in text.splitlines():
        if line.startswith("pui_event_age_seconds_bucket"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            out.append((float(bound), float(line.rsplit(" ", 1)[1])))
    return out


def bucket_quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """The q-quantile, interpolated linearly inside its histogram bucket (as PromQL does)."""
    total = buckets[-1][1]
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 0)
        lower, below = bound, count
    return lower


def window_ms(after: list, before: list) -> dict:
    """p50/p99 (ms) of the events acknowledged between two scrapes of the histogram."""
    if not after:
        return {"acked": 0, "p50_ms": None, "p99_ms": None}
    base = dict(before)
    delta = [(bound, count - base.get(bound, 0.0)) for bound, count in after]
    if delta[-1][1] <= 0:
        return {"acked": 0, "p50_ms": None, "p99_ms": None}
    return {
        "acked": int(delta[-1][1]),
        "p50_ms": bucket_quantile(delta, 0.5) * 1000,
        "p99_ms": bucket_quantile(delta, 0.99) * 1000,
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def lag(settings: config.Settings) -> int:
    return topic_sizes(settings, settings.input_topic)[1]


def rss_mib(pid: int) -> float:
    return proc_status_mib(pid, "VmRSS")


def paced_run(name: str, rate: float, seconds: float, recovery: Path) -> dict:
    """Run the job continuously, produce at ``rate`` for ``seconds``; latency is the job's own
    produce-to-acknowledged histogram; RSS, committed lag and the latency of the last 15 s
    (from the difference of two scrapes of that histogram) are sampled every 15 s."""
    port = free_port()
    env = job_env(name, PUI_METRICS_PORT=str(port))
    settings = config.load(env)
    bootstrap_cassandra(settings)
    ensure_topics(settings, PARTITIONS)
    init_recovery(env, recovery)
    command = [sys.executable, "-m", "bytewax.run", "dataflow:flow", "-r", str(recovery)]
    log_path = recovery.parent / f"{name}.log"
    recovery.parent.mkdir(parents=True, exist_ok=True)
    job = subprocess.Popen(
        [*command, "-s", "10", "-b", "60"],
        env=env,
        cwd=ROOT,
        stderr=log_path.open("wb"),
    )
    producer = Producer({"bootstrap.servers": settings.kafka_brokers, "linger.ms": 2})
    count = int(rate * seconds)
    # A pool of events sent round and round: a long soak must not hold all of them in memory.
    pool = generate(min(count, 200_000), programs=PROGRAMS, seed=7)
    trace = []
    seen: list[tuple[float, float]] = []

    def sample(t: float) -> None:
        nonlocal seen
        try:
            now_buckets = scrape_age(port)
        except OSError:
            now_buckets = []
        trace.append(
            {
                "t": round(t),
                "rss_mib": rss_mib(job.pid),
                "lag": lag(settings),
                **window_ms(now_buckets, seen),
            }
        )
        seen = now_buckets or seen

    try:
        time.sleep(8)  # the job connects and assigns partitions before the clock starts
        start = time.perf_counter()
        next_sample = start
        for i in range(count):
            value = pool[i % len(pool)]
            due = start + i / rate
            now = time.perf_counter()
            if due > now:
                time.sleep(due - now)
            while True:
                try:
                    producer.produce(settings.input_topic, value=value)
                    break
                except BufferError:
                    producer.poll(0.01)
            producer.poll(0)
            if now >= next_sample:
                sample(now - start)
                next_sample += 15
        producer.flush(60)
        sent_for = time.perf_counter() - start
        deadline = time.monotonic() + 120
        while lag(settings) > 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        sample(time.perf_counter() - start)
        buckets = scrape_age(port)
    finally:
        job.send_signal(signal.SIGINT)
        try:
            job.wait(60)
        except subprocess.TimeoutExpired:
            job.kill()
            job.wait()
    return {
        "rate": rate,
        "achieved_rate": count / sent_for,
        "seconds": seconds,
        "samples": int(buckets[-1][1]) if buckets else 0,
        "p50_ms": bucket_quantile(buckets, 0.5) * 1000,
        "p99_ms": bucket_quantile(buckets, 0.99) * 1000,
        "trace": trace,
    }


# --- main --------------------------------------------------------------------------------


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem = int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, {platform.platform()}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--configs", default="rust-1,rust-2,python-1")
    parser.add_argument("--latency-seconds", type=float, default=30)
    parser.add_argument("--soak-minutes", type=float, default=0)
    parser.add_argument(
        "--paced-rate",
        type=float,
        default=0,
        metavar="EVENTS_PER_S",
        help="production rate of the latency and soak runs (default: half the best rate"
        " measured in this run; set it when the throughput runs are short and a cold"
        " stack understates the maximum)",
    )
    parser.add_argument("--no-ceilings", action="store_true", help="skip the ceiling runs")
    parser.add_argument(
        "--job-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an extra setting for the dataflow runs, e.g. PUI_BATCH_SIZE=5000",
    )
    args = parser.parse_args()

    name = f"bench{int(time.time())}"
    work = Path(tempfile.mkdtemp(prefix="pui-e2e-"))
    env = job_env(name)
    settings = config.load(env)
    bootstrap_cassandra(settings)
    ensure_topics(settings, PARTITIONS)
    results: dict = {"machine": machine(), "events": args.events, "runs": {}}

    say(f"producing {args.events:,} events to {settings.input_topic}")
    events = generate(args.events, programs=PROGRAMS, seed=11)
    start = time.perf_counter()
    publish(settings, settings.input_topic, events, total=len(events), progress=False)
    results["produce_per_s"] = len(events) / (time.perf_counter() - start)
    programs = sorted({json.loads(e)["programId"] for e in events[:5000]})

    if not args.no_ceilings:
        say("Kafka ceiling")
        results["kafka_ceiling_per_s"] = kafka_ceiling(settings, len(events))
        say("native ceiling")
        results["sink_ceilings_per_s"] = native_ceilings(settings, events)
        say("cassandra-driver ceilings")
        rows = flattened_rows(events)
        results["sink_ceilings_per_s"] |= sink_ceilings(settings, rows)
        del rows

    for label in args.configs.split(","):
        engine, processes = label.split("-")
        table = f"run_{engine}_{processes}"
        extra = dict(item.split("=", 1) for item in args.job_env)
        say(f"dataflow {label}")
        run = timed_run(name, engine, int(processes), table, work, **extra)
        checked_rate(settings, table, programs, args.events, label, run)
        results["runs"][label] = run

    save(results)
    best = max(r["events_per_s"] for r in results["runs"].values())
    rate = args.paced_rate or best / 2
    if args.latency_seconds > 0:
        say(f"latency at {rate:,.0f} events/s for {args.latency_seconds:.0f} s")
        results["latency"] = paced_run(f"{name}lat", rate, args.latency_seconds, work / "latency")
        save(results)
    if args.soak_minutes > 0:
        say(f"soak at {rate:,.0f} events/s for {args.soak_minutes:.0f} min")
        results["soak"] = paced_run(f"{name}soak", rate, args.soak_minutes * 60, work / "soak")

    shutil.rmtree(work, ignore_errors=True)
    drop_keyspaces(settings, [name, f"{name}lat", f"{name}soak"])
    save(results)
    report(results)
    return 0


def drop_keyspaces(settings: config.Settings, names: list[str]) -> None:
    """Leftover benchmark keyspaces fill the local Cassandra's heap: drop what this run made."""
    cluster, session = connect(settings, wait=60)
    try:
        for name in names:
            session.execute(f"DROP KEYSPACE IF EXISTS ks_{name}", timeout=120)
    finally:
        cluster.shutdown()


def save(results: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "e2e.json").write_text(json.dumps(results, indent=2))


def report(r: dict) -> None:
    r.setdefault("sink_ceilings_per_s", {"(not measured)": float("nan")})
    r.setdefault("kafka_ceiling_per_s", float("nan"))
    ceiling = max(r["sink_ceilings_per_s"].values())
    print(f"Machine: {r['machine']}\n\n{r['events']:,} events, {PARTITIONS} partitions\n")
    print(
        "| what | events/s | vs sink ceiling | after start-up: events/s | vs sink ceiling "
        "| start-up s | CPU s | CPU µs/event | peak RSS MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| produce (confluent-kafka) | {r['produce_per_s']:,.0f} | | | | | | | |")
    print(f"| Kafka ceiling (one consumer) | {r['kafka_ceiling_per_s']:,.0f} | | | | | | | |")
    for what, rate in r["sink_ceilings_per_s"].items():
        print(f"| sink ceiling: {what} | {rate:,.0f} | {rate / ceiling:.0%} | | | | | | |")
    for label, run in r["runs"].items():
        rate, steady = run["events_per_s"], run["events_per_s_after_startup"]
        print(
            f"| dataflow {label} | {rate:,.0f} | {rate / ceiling:.0%} | {steady:,.0f} | "
            f"{steady / ceiling:.0%} | {run['startup_seconds']:.1f} | "
            f"{run['cpu_seconds']:.1f} | {run['cpu_seconds'] / r['events'] * 1e6:.1f} | "
            f"{run['peak_rss_mib']:.0f} |"
        )
    for key in ("latency", "soak"):
        if key in r and r[key]["samples"]:
            lat = r[key]
            print(
                f"\n{key}: target {lat['rate']:,.0f} events/s (achieved "
                f"{lat['achieved_rate']:,.0f}) for {lat['seconds']:.0f} s, "
                f"{lat['samples']:,} events, produce -> write acknowledged: "
                f"p50 {lat['p50_ms']:.0f} ms, p99 {lat['p99_ms']:.0f} ms"
            )
            print(
                "\n| t (s) | dataflow RSS MiB | consumer lag | acked in last 15 s "
                "| p50 ms | p99 ms |\n|---|---|---|---|---|---|"
            )
            for s in lat["trace"]:
                p50, p99 = s.get("p50_ms"), s.get("p99_ms")
                ms = f"{p50:.0f} | {p99:.0f}" if p50 is not None else "- | -"
                acked = s.get("acked", 0)
                print(f"| {s['t']} | {s['rss_mib']:.0f} | {s['lag']} | {acked:,} | {ms} |")


if __name__ == "__main__":
    sys.exit(main())
