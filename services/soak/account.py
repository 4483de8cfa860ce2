"""The account of a soak: what was launched, lost, wrong or leaked, and how the engine behaved.

The workloads and the fault injector write into it as they go; ``verdict`` says whether the run may
pass (nothing lost, no wrong exit code or state, no lost or duplicated log line, no hung call,
nothing leaked). Failed launches do not fail a run by themselves: a client may fail while a
service is down; what it may not do is hang, or leave the engine with something lost.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from services.soak.client import Timings
from services.soak.histogram import Histogram

EXAMPLES = 20  # each list keeps its first few cases in full; the counts are always whole


@dataclass(slots=True)
class Account:
    started: float = field(default_factory=time.monotonic)
    timings: Timings = field(default_factory=Timings)
    tried: int = 0
    succeeded: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    launch_times: list[float] = field(default_factory=list)  # seconds since start, each successful launch
    launch_latency: Histogram = field(default_factory=Histogram)  # create + start, as a client sees a launch
    launch_series: list[tuple[float, float]] = field(default_factory=list)  # (t, latency) for the plot
    checked: int = 0  # containers whose exit code, state and logs were checked
    lost: list[str] = field(default_factory=list)
    wrong_exit: list[str] = field(default_factory=list)
    wrong_state: list[str] = field(default_factory=list)
    lost_lines: int = 0
    duplicated_lines: int = 0
    line_cases: list[str] = field(default_factory=list)
    not_removed: list[str] = field(default_factory=list)
    orphans_removed: int = 0  # containers the engine made whose create answer never reached us
    faults: list[dict[str, Any]] = field(default_factory=list)
    leaks: dict[str, list[str]] = field(default_factory=dict)
    services: dict[str, list[tuple[float, int, int, int]]] = field(default_factory=dict)  # t, rss, fds, threads
    service_fds: dict[str, tuple[int, int]] = field(default_factory=dict)  # before, after
    notes: list[str] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.started

    def launch_tried(self) -> None:
        self.tried += 1

    def launch_ok(self, seconds: float) -> None:
        self.succeeded += 1
        now = self.now()
        self.launch_times.append(now)
        self.launch_latency.record(seconds)
        self.launch_series.append((round(now, 3), round(seconds, 6)))

    def launch_failed(self, cause: str) -> None:
        self.failed[cause] += 1

    def fault(self, kind: str, target: str, detail: str = "") -> None:
        self.faults.append({"t": round(self.now(), 3), "kind": kind, "target": target, "detail": detail})

    def expect_lines(self, name: str, lines: list[str], tag: str, count: int, *, copies: int = 1,
                     cut_short: bool = False) -> None:
        """Each of ``tag 1`` .. ``tag count`` exactly ``copies`` times. A process killed on purpose
        (``cut_short``) may stop early: only gaps before its last line are lost then."""
        seen: Counter[int] = Counter()
        for line in lines:
            head, _, number = line.rpartition(" ")
            if head == tag and number.isdigit():
                seen[int(number)] += 1
        last = max(seen, default=0) if cut_short else count
        lost = sum(max(copies - seen[i], 0) for i in range(1, last + 1)) if not cut_short else sum(
            1 for i in range(1, last + 1) if seen[i] == 0)
        dup = sum(max(n - copies, 0) for n in seen.values())
        self.lost_lines += lost
        self.duplicated_lines += dup
        if (lost or dup) and len(self.line_cases) < EXAMPLES:
            self.line_cases.append(f"{name}: {lost} lost, {dup} duplicated of {count} x {copies}")

    def launches_per_second(self) -> list[int]:
        if not self.launch_times:
            return []
        buckets = [0] * (int(max(self.launch_times)) + 1)
        for t in self.launch_times:
            buckets[int(t)] += 1
        return buckets

    def verdict(self) -> list[str]:
        """Why the run fails; empty when it passes."""
        why = []
        for label, cases in (("lost containers", self.lost), ("wrong exit codes", self.wrong_exit),
                             ("wrong states", self.wrong_state), ("containers not removed", self.not_removed)):
            if cases:
                why.append(f"{len(cases)} {label}")
        if self.lost_lines or self.duplicated_lines:
            why.append(f"{self.lost_lines} lost and {self.duplicated_lines} duplicated log lines")
        hangs = sum(self.timings.hangs.values())
        if hangs:
            why.append(f"{hangs} calls without an answer in time")
        if self.timings.garbled:
            why.append(f"{len(self.timings.garbled)} garbled answers")
        leaked = sum(len(v) for v in self.leaks.values())
        if leaked:
            why.append(f"{leaked} leaks ({', '.join(k for k, v in self.leaks.items() if v)})")
        if self.succeeded == 0:
            why.append("no launch succeeded")
        return why

    def to_json(self) -> dict[str, Any]:
        return {
            "duration": round(self.now(), 3),
            "launches": {"tried": self.tried, "succeeded": self.succeeded,
                         "failed": sum(self.failed.values()), "failed_by_cause": dict(self.failed.most_common())},
            "checked": self.checked,
            "lost": {"count": len(self.lost), "cases": self.lost[:EXAMPLES]},
            "wrong_exit_codes": {"count": len(self.wrong_exit), "cases": self.wrong_exit[:EXAMPLES]},
            "wrong_states": {"count": len(self.wrong_state), "cases": self.wrong_state[:EXAMPLES]},
            "log_lines": {"lost": self.lost_lines, "duplicated": self.duplicated_lines, "cases": self.line_cases},
            "not_removed": {"count": len(self.not_removed), "cases": self.not_removed[:EXAMPLES]},
            "orphans_removed": self.orphans_removed,
            "hangs": {"by_route": dict(self.timings.hangs), "cases": self.timings.hang_cases},
            "garbled_answers": {"count": len(self.timings.garbled), "cases": self.timings.garbled[:EXAMPLES]},
            "call_failures": dict(self.timings.failures.most_common()),
            "launch_latency": self.launch_latency.summary(),
            "latency": {route: h.summary() for route, h in sorted(self.timings.routes.items())},
            "launches_per_second": self.launches_per_second(),
            "faults": self.faults,
            "leaks": {kind: found for kind, found in self.leaks.items()},
            "services": {name: {"samples": [list(s) for s in samples], "fds_before_after": self.service_fds.get(name)}
                         for name, samples in self.services.items()},
            "notes": self.notes,
            "verdict": self.verdict() or ["pass"],
        }

    def render(self) -> str:
        """The account for a person: the figures first, then the cases behind any failure."""
        lines = [f"soak: {self.tried} launches tried, {self.succeeded} succeeded, "
                 f"{sum(self.failed.values())} failed, in {self.now():.1f} s; {self.checked} containers checked"]
        for cause, n in self.failed.most_common(10):
            lines.append(f"  failed launch x{n}: {cause}")
        lines.append(f"lost containers: {len(self.lost)}; wrong exit codes: {len(self.wrong_exit)}; "
                     f"wrong states: {len(self.wrong_state)}; log lines lost: {self.lost_lines}, "
                     f"duplicated: {self.duplicated_lines}; not removed: {len(self.not_removed)}; "
                     f"hung calls: {sum(self.timings.hangs.values())}")
        for case in [*self.timings.hang_cases[:5], *self.timings.garbled[:5], *self.lost[:5], *self.wrong_exit[:5],
                     *self.wrong_state[:5], *self.line_cases[:5], *self.not_removed[:5]]:
            lines.append(f"  {case}")
        leaked = {k: v for k, v in self.leaks.items() if v}
        lines.append("leaks: " + ("none" if not leaked else "; ".join(f"{k}: {len(v)}" for k, v in leaked.items())))
        for kind, found in leaked.items():
            for item in found[:5]:
                lines.append(f"  {kind}: {item}")
        lines.append(f"faults: {len(self.faults)} " + " ".join(
            f"{kind}x{n}" for kind, n in Counter(f["kind"] for f in self.faults).items()))
        launch = self.launch_latency.summary()
        lines.append(f"launch (create+start) latency: p50 {launch['p50']:.3f} p95 {launch['p95']:.3f} "
                     f"p99 {launch['p99']:.3f} max {launch['max']:.3f} s")
        lines.append("latency (s)            count      p50      p95      p99      max")
        for route, h in sorted(self.timings.routes.items()):
            s = h.summary()
            lines.append(f"  {route[:38]:38} {s['count']:6} {s['p50']:8.3f} {s['p95']:8.3f} {s['p99']:8.3f} "
                         f"{s['max']:8.3f}")
        rates = self.launches_per_second()
        if rates:
            lines.append(f"launches/s: mean {sum(rates) / len(rates):.1f}, max {max(rates)}, over {len(rates)} s")
        for name, samples in self.services.items():
            if samples:
                rss = [s[1] for s in samples]
                lines.append(f"  {name}: RSS {rss[0] / 2**20:.0f} -> {rss[-1] / 2**20:.0f} MiB "
                             f"(max {max(rss) / 2**20:.0f}), fds {samples[0][2]} -> {samples[-1][2]}, "
                             f"threads {samples[0][3]} -> {samples[-1][3]}")
        for note in self.notes:
            lines.append(f"note: {note}")
        why = self.verdict()
        lines.append("verdict: " + ("PASS" if not why else "FAIL: " + "; ".join(why)))
        return "\n".join(lines)
