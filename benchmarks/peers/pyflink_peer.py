"""Our dataflow against the seed's design, a PyFlink job, on the same events and the same box.

    .venv/bin/python -m benchmarks.peers.pyflink_peer [--events 200000] [--parallelism 1,2]

Needs the local stack (``scripts/services up``). The first run creates the PyFlink virtualenv
(``var/peers/pyflink-venv``: apache-flink from PyPI, pinned below) and downloads the Flink Kafka
and Cassandra connector jars from Maven Central into ``var/peers/jars``. Then, on one fresh
topic of 4 partitions holding N realistic events, each contender runs from the earliest offset
until the topic is drained, into its own table of the same schema; the time includes process
start, as it does for our job. CPU seconds and peak RSS cover the whole process tree (for
PyFlink: the JVM and its Python workers). Every run's row count is checked.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchmarks.e2e import (
    PARTITIONS,
    PROGRAMS,
    ROOT,
    checked_rate,
    job_env,
    machine,
    proc_status_mib,
    say,
    timed_run,
)
from dataflow import config
from dataflow.bootstrap import bootstrap_cassandra
from dataflow.cassandra_session import connect
from dataflow.flatten import COLUMNS
from dataflow.kafka_admin import ensure_topics
from dataflow.produce import publish
from dataflow.sample_events import generate

PYFLINK = "apache-flink==1.20.3"
MAVEN = "https://repo1.maven.org/maven2"
# The newest Cassandra connector Maven Central serves here is built for Flink 1.16; it runs on
# 1.20 (the SinkFunction API it uses is still there).
JARS = (
    "org/apache/flink/flink-connector-kafka/3.3.0-1.20/flink-connector-kafka-3.3.0-1.20.jar",
    "org/apache/kafka/kafka-clients/3.4.0/kafka-clients-3.4.0.jar",
    "org/apache/flink/flink-connector-cassandra_2.12/3.0.0-1.16/"
    "flink-connector-cassandra_2.12-3.0.0-1.16.jar",
    # The connector's shaded DataStax driver 3 still needs Dropwizard metrics at runtime.
    "io/dropwizard/metrics/metrics-core/3.2.2/metrics-core-3.2.2.jar",
)
PEERS = ROOT / "var" / "peers"
VENV = PEERS / "pyflink-venv"
RESULTS = ROOT / "benchmarks" / "results"


def ensure_pyflink() -> tuple[Path, list[Path]]:
    python = VENV / "bin" / "python"
    if not python.exists():
        say(f"creating {VENV} with {PYFLINK} (first time only, a few minutes)")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", PYFLINK], check=True)
    jars = []
    for path in JARS:
        target = PEERS / "jars" / Path(path).name
        if not target.exists():
            say(f"downloading {target.name}")
            target.parent.mkdir(parents=True, exist_ok=True)
            with urllib.request.urlopen(f"{MAVEN}/{path}", timeout=300) as resp:
                tmp = target.with_suffix(".part")
                tmp.write_bytes(resp.read())
                tmp.rename(target)
        jars.append(target)
    return python, jars


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_and_rss(pid: int) -> tuple[float, float]:
    """CPU seconds so far and resident MiB of one process (0, 0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return cpu, proc_status_mib(pid, "VmRSS")


def run_pyflink(python: Path, jars: list[Path], settings, table: str, parallelism: int) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        # Dates are handed to Cassandra as midnight timestamps: the JVM must read them as UTC.
        "TZ": "UTC",
        "JAVA_TOOL_OPTIONS": "-Duser.timezone=UTC -Xmx1g",
    }
    command = [
        str(python),
        str(ROOT / "benchmarks" / "peers" / "pyflink_job.py"),
        "--brokers", settings.kafka_brokers,
        "--cassandra", settings.cassandra_hosts[0],
        "--topic", settings.input_topic,
        "--group", f"{settings.group_id}-{table}",
        "--keyspace", settings.cassandra_keyspace,
        "--table", table,
        "--jars", ";".join(str(j) for j in jars),
        "--parallelism", str(parallelism),
    ]  # fmt: skip
    cpu: dict[int, float] = {}
    peak_rss = 0.0
    with tempfile.TemporaryFile(mode="w+") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            rss = 0.0
            for pid in tree(proc.pid):
                c, r = cpu_and_rss(pid)
                cpu[pid] = max(cpu.get(pid, 0.0), c)
                rss += r
            peak_rss = max(peak_rss, rss)
            time.sleep(0.2)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            log.seek(0)
            raise RuntimeError(f"PyFlink job exited {proc.returncode}:\n{log.read()[-4000:]}")
    return {"seconds": seconds, "cpu_seconds": sum(cpu.values()), "peak_rss_mib": peak_rss}


def same_rows(settings, tables: list[str], program: str) -> bool:
    """Whether one program's rows, write timestamps included, are equal in every table."""
    cluster, session = connect(settings, wait=60)
    try:
        seen = []
        for table in tables:
            rows = session.execute(
                f"SELECT {', '.join(COLUMNS)}, writetime(program_name) FROM "
                f"{settings.cassandra_keyspace}.{table} WHERE program_id = %s",
                (program,),
                timeout=60,
            )
            seen.append(sorted(tuple(map(repr, row)) for row in rows))
        return all(s == seen[0] for s in seen)
    finally:
        cluster.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--parallelism", default="1,2", help="PyFlink parallelisms to run")
    parser.add_argument("--processes", default="1,2", help="Bytewax process counts to run")
    args = parser.parse_args()

    python, jars = ensure_pyflink()
    name = f"peer{int(time.time())}"
    env = job_env(name)
    settings = config.load(env)
    bootstrap_cassandra(settings)
    ensure_topics(settings, PARTITIONS)
    say(f"producing {args.events:,} events to {settings.input_topic}")
    events = generate(args.events, programs=PROGRAMS, seed=11)
    publish(settings, settings.input_topic, events, total=len(events), progress=False)
    programs = sorted({json.loads(e)["programId"] for e in events[:5000]})
    results: dict = {"machine": machine(), "events": args.events, "runs": {}}
    work = Path(tempfile.mkdtemp(prefix="pui-peer-"))
    tables: list[str] = []

    def check(label: str, table: str, run: dict) -> None:
        checked_rate(settings, table, programs, args.events, label, run)
        results["runs"][label] = run
        tables.append(table)
        say(f"{label}: {run['events_per_s']:,.0f} events/s, {run['peak_rss_mib']:.0f} MiB")

    for n in [int(x) for x in args.processes.split(",") if x]:
        table = f"bytewax_{n}"
        say(f"our dataflow, {n} process(es)")
        run = timed_run(name, "rust", n, table, work)
        run["peak_rss_mib"] = run["peak_rss_total_mib"]
        check(f"program-user-info (Bytewax, {n} process(es))", table, run)
    for p in [int(x) for x in args.parallelism.split(",") if x]:
        table = f"pyflink_{p}"
        bootstrap_cassandra(config.load(job_env(name, PUI_CASSANDRA_TABLE=table)))
        say(f"PyFlink, parallelism {p}")
        run = run_pyflink(python, jars, settings, table, p)
        check(f"PyFlink peer (parallelism {p})", table, run)

    if len(tables) > 1:
        results["same_rows"] = same_rows(settings, tables, programs[0])
        say(f"rows of program {programs[0]} identical across {tables}: {results['same_rows']}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "peer.json").write_text(json.dumps(results, indent=2))
    runs = results["runs"]
    peer_best = max(r["events_per_s"] for k, r in runs.items() if k.startswith("PyFlink"))
    print(f"Machine: {results['machine']}\n\n{args.events:,} events, {PARTITIONS} partitions\n")
    print("| what | events/s | CPU s | peak RSS MiB (all processes) | vs best PyFlink |")
    print("|---|---|---|---|---|")
    for label, run in runs.items():
        print(
            f"| {label} | {run['events_per_s']:,.0f} | {run['cpu_seconds']:.1f} | "
            f"{run['peak_rss_mib']:.0f} | {run['events_per_s'] / peer_best:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
