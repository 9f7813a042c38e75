"""What the jobs bench found, and how it is printed: its figures, targets and verdicts.

``bench.jobs`` measures and fills these; :func:`report` turns them into the
text it prints.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Final

from bench.report import KIB, MIB, environment, ms, percentile, table, times, verdict

# Issue 12's targets for the first event after startJob returns.
LATENCY_TARGET_MS: Final = 10.0
LATENCY_P99_TARGET_MS: Final = 50.0
RATIO_TARGET: Final = 0.3
SUBSCRIPTION_TARGET_KIB: Final = 50.0
# A pipeline may cost at most this much more than its steps run by hand.
PIPELINE_TARGET: Final = 1.1
# One idle subscription in this many is checked to be live (its job is then cancelled).
SAMPLE_EVERY: Final = 20


@dataclass
class Latencies:
    """Seconds, one sample per job."""

    first_event: list[float] = field(default_factory=list)  # startJob returned → first event
    start_job: list[float] = field(default_factory=list)  # startJob's round trip
    # The same span split at the event's `at` (set when the worker publishes it):
    to_publish: list[float] = field(default_factory=list)  # → the worker publishes RUNNING
    to_client: list[float] = field(default_factory=list)  # → the client has it
    not_running: int = 0  # first events that were not RUNNING


@dataclass(frozen=True)
class Throughput:
    """``jobs`` done in ``seconds``, ``failed`` of them not successfully."""

    jobs: int
    seconds: float
    failed: int
    # CPU seconds (user + system, /proc) per job of each process doing the work,
    # by name: the steadier figure on a loaded machine.
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds

    @property
    def cpu_text(self) -> str:
        return ", ".join(f"{name} {ms(seconds)}" for name, seconds in self.cpu.items())


@dataclass(frozen=True)
class Memory:
    """``depot serve``'s RSS around one layout of idle subscriptions."""

    connections: int
    per_connection: int
    before: int  # bytes of RSS
    after: int
    sampled: int  # subscriptions whose job was then cancelled
    confirmed: int  # of those, the ones that delivered it: they were live
    users: int = 1  # the sockets' users, one after the other
    # RSS once the first `first_half` subscriptions were open (the sockets open in two halves).
    middle: int = 0
    first_half: int = 0

    @property
    def subscriptions(self) -> int:
        return self.connections * self.per_connection

    @property
    def per_subscription(self) -> float:
        return (self.after - self.before) / self.subscriptions

    @property
    def second_half(self) -> float | None:
        """Growth per subscription of the second half alone: without what fills once."""
        opened = self.subscriptions - self.first_half
        if not self.first_half or opened <= 0:
            return None
        return (self.after - self.middle) / opened


@dataclass
class Pipelines:
    """Seconds per round, end to end: the three steps as one pipeline, and as three
    jobs one after the other (each started when the previous one's final event came)."""

    pipeline: list[float] = field(default_factory=list)
    separate: list[float] = field(default_factory=list)
    # Two independent steps (a thumbnail and a WebP conversion of a 3-megapixel
    # ``:input``) as one pipeline, and as two jobs one after the other.
    branched: list[float] = field(default_factory=list)
    branches_separate: list[float] = field(default_factory=list)
    failed: int = 0

    @property
    def ratio(self) -> float:
        return statistics.median(self.pipeline) / statistics.median(self.separate)

    @property
    def branched_ratio(self) -> float:
        return statistics.median(self.branched) / statistics.median(self.branches_separate)


@dataclass(frozen=True)
class Observed:
    """One round of no-op jobs with metrics and tracing on, then off (or the reverse):
    each side's throughput and its processes' CPU seconds per job, by process
    (``serve``, ``worker``)."""

    on: Throughput
    on_cpus: dict[str, float]
    off: Throughput
    off_cpus: dict[str, float]
    # CPU seconds per second of each process, idle just before the timed jobs.
    on_idle: dict[str, float] = field(default_factory=dict)
    off_idle: dict[str, float] = field(default_factory=dict)

    @property
    def on_cpu(self) -> float:
        return sum(self.on_cpus.values())

    @property
    def off_cpu(self) -> float:
        return sum(self.off_cpus.values())

    @property
    def on_net(self) -> float:
        """On's CPU per job less what its processes spend idle over as long (polling)."""
        return _net(self.on, self.on_cpus, self.on_idle)

    @property
    def off_net(self) -> float:
        return _net(self.off, self.off_cpus, self.off_idle)

    @property
    def rate_ratio(self) -> float:
        return self.on.rate / self.off.rate

    @property
    def cpu_ratio(self) -> float:
        """Off's CPU per job over on's: read like ``rate_ratio`` (0.95x: 5 % more CPU)."""
        return self.off_cpu / self.on_cpu


def _net(run: Throughput, cpus: dict[str, float], idle: dict[str, float]) -> float:
    per_job = run.seconds / run.jobs
    return sum(cpu - idle.get(name, 0.0) * per_job for name, cpu in cpus.items())


@dataclass(frozen=True)
class Results:
    """One run's figures, with what the run was on."""

    setup: str
    latencies: Latencies
    bare: Throughput
    depot: Throughput
    clients: int
    threads: int
    memories: list[Memory]
    notes: list[str]
    observed: list[Observed] = field(default_factory=list)
    pipelines: Pipelines | None = None
    # 2b's OTEL_TRACES_SAMPLER (":ARG" for its argument).
    observed_sampler: str = "always_on"
    # What 2b's "on" side switched on: both, metrics or tracing.
    observed_on: str = "both"


def report(results: Results) -> str:
    lat = results.latencies
    first = lat.first_event
    median = statistics.median(first)
    p99 = percentile(first, 99)
    lines = [
        results.setup,
        environment("dramatiq", "strawberry-graphql", "uvicorn"),
        "",
        f"1. First event after startJob returns ({len(first)} verify jobs, one at a time)",
        *table(
            [
                ["", "latency", "target"],
                ["median", ms(median), f"< {LATENCY_TARGET_MS:g} ms"],
                ["p95", ms(percentile(first, 95)), ""],
                ["p99", ms(percentile(first, 99)), f"< {LATENCY_P99_TARGET_MS:g} ms"],
                ["max", ms(max(first)), ""],
            ],
            indent="  ",
        ),
        f"  medians of the parts: startJob round trip {ms(statistics.median(lat.start_job))}; "
        f"startJob returned → worker publishes RUNNING {ms(statistics.median(lat.to_publish))}; "
        f"→ client has it {ms(statistics.median(lat.to_client))}",
    ]
    if lat.not_running:
        lines.append(f"  {lat.not_running} first events were not RUNNING")
    bare, depot = results.bare, results.depot
    ratio = depot.rate / bare.rate
    lines += [
        "",
        f"2. Throughput, {results.threads} worker threads in each worker process",
        *table(
            [
                ["path", "jobs", "time", "jobs/s", "vs bare", "target", "CPU per job"],
                [
                    "bare Dramatiq actor (one INCR)",
                    str(bare.jobs),
                    f"{bare.seconds:.2f} s",
                    f"{bare.rate:.0f}",
                    times(1),
                    "",
                    bare.cpu_text,
                ],
                [
                    f"Depot verify jobs, {results.clients} GraphQL clients",
                    str(depot.jobs),
                    f"{depot.seconds:.2f} s",
                    f"{depot.rate:.0f}",
                    times(ratio),
                    f">= {times(RATIO_TARGET)}",
                    depot.cpu_text,
                ],
            ],
            indent="  ",
        ),
    ]
    if depot.failed:
        lines.append(f"  {depot.failed} Depot jobs did not succeed")
    lines += _observed(results.observed, results.observed_sampler, results.observed_on)
    rows = [
        [
            "layout",
            "subscriptions",
            "RSS before",
            "RSS after",
            "each",
            "second half**",
            "live*",
            "target",
        ]
    ]
    for memory in results.memories:
        rows.append(
            [
                f"{memory.connections} WebSockets x {memory.per_connection}"
                + (f", {memory.users} users" if memory.users > 1 else ", one user"),
                str(memory.subscriptions),
                f"{memory.before / MIB:.1f} MiB",
                f"{memory.after / MIB:.1f} MiB",
                f"{memory.per_subscription / KIB:.1f} KiB",
                "" if memory.second_half is None else f"{memory.second_half / KIB:.1f} KiB",
                f"{memory.confirmed}/{memory.sampled}",
                f"< {SUBSCRIPTION_TARGET_KIB:g} KiB",
            ]
        )
    lines += [
        "",
        "3. Memory per idle subscription (jobEvents of queued jobs; depot serve's RSS, "
        "fresh process each)",
        *table(rows, indent="  "),
        f"  * every {SAMPLE_EVERY}th subscription's job is cancelled afterwards: those that "
        "deliver it were live",
        "  ** the growth per subscription while the second half of the sockets opened: "
        "without what fills once (the database pool, caches)",
        *(f"  {note}" for note in results.notes),
        "",
        f"median first-event latency {ms(median)}: {verdict(median * 1000 < LATENCY_TARGET_MS)}",
        f"p99 first-event latency {ms(p99)}: {verdict(p99 * 1000 < LATENCY_P99_TARGET_MS)}",
        f"throughput ratio {times(ratio)}: {verdict(ratio >= RATIO_TARGET and not depot.failed)}",
    ]
    for memory in results.memories:
        ok = (
            memory.per_subscription / KIB < SUBSCRIPTION_TARGET_KIB
            and memory.confirmed == memory.sampled
        )
        lines.append(
            f"{memory.connections} WebSockets x {memory.per_connection}: "
            f"{memory.per_subscription / KIB:.1f} KiB per subscription: {verdict(ok)}"
        )
    if results.pipelines is not None:
        lines += _pipeline_lines(results.pipelines)
    return "\n".join(lines)


def _observed(rounds: list[Observed], sampler: str, switched: str) -> list[str]:
    """Section 2b: what metrics and tracing cost a no-op job, by rate and by CPU."""
    if not rounds:
        return []

    def idle_rate(idle: list[dict[str, float]]) -> str:
        return f"{statistics.median(sum(i.values()) for i in idle) * 1000:.0f} ms/s"

    def spread(values: list[float]) -> list[str]:
        return [times(min(values)), times(statistics.median(values)), times(max(values))]

    rates = [r.rate_ratio for r in rounds]
    cpus = [r.cpu_ratio for r in rounds]
    failed = sum(r.on.failed + r.off.failed for r in rounds)
    on = {
        "both": f"Metrics + tracing (OTLP to a loopback sink, sampler {sampler})",
        "metrics": "Metrics alone (tracing off on both sides)",
        "tracing": f"Tracing alone (OTLP to a loopback sink, sampler {sampler}; metrics off)",
    }[switched]
    by_process = [
        [
            f"  CPU per job, depot {name}",
            ms(statistics.median(r.on_cpus[name] for r in rounds)),
            ms(statistics.median(r.off_cpus[name] for r in rounds)),
            *spread([r.off_cpus[name] / r.on_cpus[name] for r in rounds]),
        ]
        for name in rounds[0].on_cpus
    ]
    return [
        "",
        f"2b. {on} on / both off, "
        f"{len(rounds)} interleaved rounds of {rounds[0].on.jobs} verify jobs per side",
        *table(
            [
                ["", "on", "off", "min", "median", "max"],
                [
                    "jobs/s",
                    f"{statistics.median(r.on.rate for r in rounds):.0f}",
                    f"{statistics.median(r.off.rate for r in rounds):.0f}",
                    *spread(rates),
                ],
                [
                    "CPU per job (serve + worker)",
                    ms(statistics.median(r.on_cpu for r in rounds)),
                    ms(statistics.median(r.off_cpu for r in rounds)),
                    *spread(cpus),
                ],
                *by_process,
                [
                    "  idle CPU, serve + worker",
                    idle_rate([r.on_idle for r in rounds]),
                    idle_rate([r.off_idle for r in rounds]),
                    "",
                    "",
                    "",
                ],
                [
                    "CPU per job less idle polling",
                    ms(statistics.median(r.on_net for r in rounds)),
                    ms(statistics.median(r.off_net for r in rounds)),
                    *spread([r.off_net / r.on_net for r in rounds]),
                ],
            ],
            indent="  ",
        ),
        "  ratios: on / off for jobs/s; off / on for CPU, so both read alike "
        "(0.95x: 5 % slower, or 5 % more CPU). CPU time hardly depends on what else "
        "the machine runs; jobs/s does. An idle worker polls Redis: the last row takes "
        "each side's idle CPU rate times its seconds per job off (a side with slower "
        "jobs polls longer per job).",
        *([f"  {failed} jobs did not succeed"] if failed else []),
    ]


def _pipeline_lines(found: Pipelines) -> list[str]:
    ratio = found.ratio
    separate, pipeline = statistics.median(found.separate), statistics.median(found.pipeline)
    return [
        "",
        f"2c. verify -> convert -> thumbnails of a small PNG, {len(found.pipeline)} rounds "
        "(median end to end)",
        *table(
            [
                ["path", "median", "vs separate", "target"],
                ["three jobs, one after the other", ms(separate), times(1), ""],
                ["one pipeline", ms(pipeline), times(ratio), f"<= {times(PIPELINE_TARGET)}"],
            ],
            indent="  ",
        ),
        *([f"  {found.failed} rounds did not succeed"] if found.failed else []),
        f"pipeline vs separate jobs {times(ratio)}: "
        f"{verdict(ratio <= PIPELINE_TARGET and not found.failed)}",
        *_branched_lines(found),
    ]


def _branched_lines(found: Pipelines) -> list[str]:
    if not found.branched:
        return []
    ratio = found.branched_ratio
    separate, branched = (
        statistics.median(found.branches_separate),
        statistics.median(found.branched),
    )
    return [
        "  parallel branches (a thumbnail and a WebP of one 3 MP :input), "
        f"{len(found.branched)} rounds",
        *table(
            [
                ["path", "median", "vs separate", "target"],
                ["two jobs, one after the other", ms(separate), times(1), ""],
                ["one pipeline, two branches", ms(branched), times(ratio), f"< {times(1)}"],
            ],
            indent="  ",
        ),
        f"branches vs separate jobs {times(ratio)}: {verdict(ratio < 1 and not found.failed)}",
    ]
