"""Bar chart of throughput per configuration from ``benchmarks/results/e2e.json``, plus the
PyFlink peer's runs from ``benchmarks/results/peer.json`` when that file exists (a separate run
on the same events and box: see RESULTS.md).

.venv/bin/pip install matplotlib==3.11.2   # or: pip install -e '.[plot]'
.venv/bin/python -m benchmarks.plot        # writes benchmarks/throughput.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("benchmarks.plot needs matplotlib: pip install matplotlib==3.11.2", file=sys.stderr)
        return 2
    results = json.loads((HERE / "results" / "e2e.json").read_text())
    bars = [("Kafka consume\n(ceiling)", results["kafka_ceiling_per_s"])]
    for what, rate in results["sink_ceilings_per_s"].items():
        bars.append((f"sink ceiling:\n{what.replace(' per partition', '')}", rate))
    for label, run in results["runs"].items():
        engine, procs = label.split("-")
        bars.append((f"dataflow\n{engine}, {procs} proc", run["events_per_s"]))
    colors = ["#999999"] * (1 + len(results["sink_ceilings_per_s"])) + ["#2b7bba"] * len(
        results["runs"]
    )
    peer = HERE / "results" / "peer.json"
    if peer.exists():
        for label, run in json.loads(peer.read_text())["runs"].items():
            if label.startswith("PyFlink"):
                bars.append((label.replace(" (", "\n("), run["events_per_s"]))
                colors.append("#d9822b")
    fig, ax = plt.subplots(figsize=(11, 4.5))
    names = [b[0] for b in bars]
    values = [b[1] for b in bars]
    ax.bar(names, values, color=colors)
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("events (rows) per second, log scale")
    ax.set_title(f"{results['events']:,} events, 4 partitions — {results['machine'][:60]}")
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "throughput.png", dpi=110)
    print(HERE / "throughput.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
