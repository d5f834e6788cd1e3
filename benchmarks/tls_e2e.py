"""TLS to Cassandra: the streaming job's throughput and CPU per event with each engine, through
client encryption and in clear text to the same node, in the same run.

    .venv/bin/python -m benchmarks.tls_e2e [--events 100000] [--rounds 2]

Needs the local stack's Kafka and the Cassandra jars (`scripts/install`, `scripts/services up`).
Starts a private one-node Cassandra whose native port takes TLS and clear text alike
(`client_encryption_options.optional`), so that the only difference between two runs of an
engine is the encryption. Each run reads the same topic from the start into its own table, is
timed as benchmarks/e2e.py times a dataflow (start-up apart), and is checked row for row.
The runs go in one order in the first round and in the reverse order in the next (a freshly
started node speeds up as it warms), and each figure is the mean over the rounds. Prints a
Markdown table with ratios to the Rust engine in clear text, and writes
``benchmarks/results/tls_e2e.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from confluent_kafka.admin import AdminClient

from benchmarks import e2e
from dataflow import config
from dataflow.bootstrap import bootstrap_cassandra
from dataflow.kafka_admin import ensure_topics
from dataflow.produce import publish
from dataflow.sample_events import generate
from tests.tls_node import make_pki, tls_node

RUNS = (
    ("rust", False),
    ("rust", True),
    ("python", False),
    ("python", True),
)


def say(msg: str) -> None:
    print(f"[tls] {msg}", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each configuration")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="pui-tls-"))
    (work / "pki").mkdir()
    (work / "node").mkdir()
    pki = make_pki(work / "pki")
    results: dict = {"machine": e2e.machine(), "events": args.events, "runs": {}}
    try:
        say("starting a private Cassandra node with client encryption (about 20 s)")
        with tls_node(pki, work / "node", require_client_auth=False, optional=True) as port:
            clear = {"PUI_CASSANDRA_PORT": str(port)}
            tls = clear | {
                "PUI_CASSANDRA_TLS": "true",
                "PUI_CASSANDRA_TLS_CA_FILE": str(pki / "ca.pem"),
            }
            name = f"tls{int(time.time())}"
            settings = config.load(e2e.job_env(name, **clear))
            bootstrap_cassandra(settings, wait=120)
            ensure_topics(settings, e2e.PARTITIONS)
            try:
                say(f"producing {args.events:,} events to {settings.input_topic}")
                events = generate(args.events, programs=e2e.PROGRAMS, seed=11)
                publish(settings, settings.input_topic, events, total=len(events), progress=False)
                programs = sorted({json.loads(e)["programId"] for e in events[:5000]})
                del events
                for round_ in range(args.rounds):
                    order = RUNS if round_ % 2 == 0 else RUNS[::-1]
                    for engine, encrypted in order:
                        label = f"{engine}-{'tls' if encrypted else 'clear'}"
                        say(f"round {round_ + 1}: dataflow {label}")
                        table = f"run_{label.replace('-', '_')}_{round_}"
                        cassandra = tls if encrypted else clear
                        run = e2e.timed_run(name, engine, 1, table, work, **cassandra)
                        e2e.checked_rate(settings, table, programs, args.events, label, run)
                        run["cpu_us_per_event"] = run["cpu_seconds"] / args.events * 1e6
                        results["runs"].setdefault(label, []).append(run)
            finally:
                admin = AdminClient({"bootstrap.servers": settings.kafka_brokers})
                for future in admin.delete_topics([settings.input_topic]).values():
                    future.result()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    e2e.RESULTS.mkdir(exist_ok=True)
    (e2e.RESULTS / "tls_e2e.json").write_text(json.dumps(results, indent=2))
    report(results)
    return 0


def mean(runs: list[dict], key: str) -> float:
    return sum(run[key] for run in runs) / len(runs)


def report(r: dict) -> None:
    base = r["runs"]["rust-clear"]
    base_rate = mean(base, "events_per_s_after_startup")
    base_cpu = mean(base, "cpu_us_per_event")
    rounds = len(base)
    print(f"\n{r['machine']}; {r['events']:,} events, one process per run, mean of {rounds}\n")
    print("| run | events/s (after start-up) | vs rust clear | CPU µs/event | vs rust clear |")
    print("|---|---:|---:|---:|---:|")
    for label, runs in r["runs"].items():
        rate = mean(runs, "events_per_s_after_startup")
        cpu = mean(runs, "cpu_us_per_event")
        each = ", ".join(f"{run['events_per_s_after_startup']:,.0f}" for run in runs)
        print(
            f"| {label} | {rate:,.0f} ({each}) | {rate / base_rate:.2f} "
            f"| {cpu:.1f} | {cpu / base_cpu:.2f} |"
        )


if __name__ == "__main__":
    sys.exit(main())
