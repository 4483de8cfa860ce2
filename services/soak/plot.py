"""``--plot FILE``: latency and launch rate over time with the faults marked, and the services'
memory. matplotlib is imported here only, and this module only when a plot is asked for (the
``soak`` extra installs it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def draw(report: dict[str, Any], latencies: list[tuple[float, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, rate, mem) = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    if latencies:
        lat.scatter([t for t, _ in latencies], [v * 1000 for _, v in latencies], s=2, alpha=0.4)
    lat.set_ylabel("launch latency (ms)")
    lat.set_yscale("log")
    per_second = report["launches_per_second"]
    rate.plot(range(len(per_second)), per_second, drawstyle="steps-post")
    rate.set_ylabel("launches/s")
    for name, service in report["services"].items():
        samples = service["samples"]
        mem.plot([s[0] for s in samples], [s[1] / 2**20 for s in samples], label=name)
    mem.set_ylabel("RSS (MiB)")
    mem.set_xlabel("seconds")
    if report["services"]:
        mem.legend(loc="upper left")
    for fault in report["faults"]:
        for axis in (lat, rate, mem):
            axis.axvline(fault["t"], color="red", alpha=0.3, linewidth=0.8)
    lat.set_title(f"skiff soak: {report['launches']['succeeded']} launches, {len(report['faults'])} faults "
                  f"(red lines), verdict: {'; '.join(report['verdict'])}"[:120], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
