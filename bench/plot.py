"""The latency-percentile plot of a benchmark run (run with the bench venv's python, which has
matplotlib; the project's venv does not need it).

``.bench/venv-peers/bin/python bench/plot.py .bench/work/results.json docs/img/latency_percentiles.png``
"""

from __future__ import annotations

import json
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FixedLocator, FuncFormatter

SINGLE = [
    "e2e_1",
    "feast_1",
    "floor_3hops_1",
    "encoder_1",
    "predictor_1",
    "mlserver_1",
    "floor_fastapi_1",
    "floor_1",
]
BATCH = ["e2e_100", "feast_100", "e2e_1000"]
STYLE = {"vigil": "-", "peer": "--", "floor": ":"}
#: ``feast_1`` stands for every feast serve case of one row (``feast1w_1``, ``feast2w_1``, ...:
#: one per worker count; an older results.json has ``feast_1`` itself).
FEAST = re.compile(r"^feast(?:(\d+)w)?_(\d+)$")


def _expand(keys: list[str], results: dict) -> list[str]:
    out = []
    for key in keys:
        m = FEAST.match(key)
        if not m:
            out.append(key)
            continue
        found = [
            (int(f.group(1) or 1), k)
            for k in results["cases"]
            if (f := FEAST.match(k)) and f.group(2) == m.group(2)
        ]
        out += [k for _, k in sorted(found)]
    return out


def _x(p: float) -> float:
    """HdrHistogram's x axis: 1 / (1 - percentile)."""
    return 1.0 / (1.0 - p / 100.0)


def _panel(ax, results: dict, keys: list[str], pick) -> None:
    for key in keys:
        case = results["cases"].get(key)
        if not case:
            continue
        run = pick(case["runs"])
        if not run or "spectrum" not in run:
            continue
        pts = [(p, v) for p, v in run["spectrum"] if 0 < p < 100]
        label = f"{case['label']} ({run['rate']:g} req/s)"
        ax.plot(
            [_x(p) for p, _ in pts],
            [v for _, v in pts],
            STYLE.get(case["group"], "-"),
            marker="o",
            markersize=3,
            label=label,
        )
    ticks = [50, 90, 99, 99.9, 99.99]
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(FixedLocator([_x(p) for p in ticks]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"p{100 * (1 - 1 / x):g}"))
    ax.xaxis.set_minor_locator(FixedLocator([]))
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency from intended send time (ms)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")


def main() -> None:
    results_path, out = sys.argv[1], sys.argv[2]
    with open(results_path) as fh:
        results = json.load(fh)

    def lowest_open(case_runs):
        """The open-loop run at 100 req/s (most samples at a rate every server keeps up with),
        else the lowest rate."""
        opened = [r for r in case_runs if r["mode"] == "open"]
        at_100 = [r for r in opened if r["rate"] == 100]
        return at_100[0] if at_100 else (min(opened, key=lambda r: r["rate"]) if opened else None)

    fig, axes = plt.subplots(1, 2, figsize=(15, 6.5))
    _panel(axes[0], results, _expand(SINGLE, results), lowest_open)
    axes[0].set_title("one row per request, open loop")
    _panel(axes[1], results, _expand(BATCH, results), lowest_open)
    axes[1].set_title("batches, open loop")
    m = results["machine"]
    fig.suptitle(
        f"Vigil benchmark, {results['plan']['name']} plan, {m['date']}, "
        f"{m['nproc']} cores ({m['cpu_model']})",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
