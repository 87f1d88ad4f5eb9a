"""Self-test of an installed version before it may be activated.

Gates, each reported as a :class:`edgeops.protocol.GateResult` with the measured value and the
threshold:

- ``load``:         the model loads in the runtime within ``max_load_s``
- ``golden``:       every golden vector's outputs within the bundle's tolerances (mismatches counted)
- ``errors``:       no inference raised while running golden inputs
- ``latency_p95``:  p95 latency over ``latency_runs`` inferences <= budget x ``latency_factor``
- ``memory``:       RSS growth while loading <= ``max_memory_mb`` (or the manifest's budget), when set

The report also carries the benchmark figures (load time, p50/p95/p99 latency, memory) that the
``self_test`` command sends to the console without activating anything, and
:func:`host_figures` adds what the host exposes about itself (CPU frequency, temperature).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from edgeops.bundle import GOLDEN_NAME, Manifest
from edgeops.golden import GoldenVectors, compare_outputs
from edgeops.protocol import GateResult

from edgeops.agent.config import SelfTestConfig
from edgeops.agent.runtimes import InferenceError, Runtime, RuntimeFactory
from edgeops.agent.system import percentile, rss_mb, temperature_c

CPUFREQ_PATH = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq")
CPUINFO_PATH = Path("/proc/cpuinfo")


@dataclass
class SelfTestReport:
    """Outcome of a self-test: gates, benchmark figures, and (``keep_runtime``) the loaded
    runtime and the golden vectors it was checked with when it passed."""

    passed: bool
    gates: list[GateResult]
    load_s: float | None = None
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_p99_ms: float | None = None
    latency_runs: int = 0  # timed inferences behind the latency figures
    memory_mb: float | None = None
    seconds: float = 0.0  # wall time of the whole self-test
    runtime: Runtime | None = field(default=None, repr=False)
    golden: GoldenVectors | None = field(default=None, repr=False)

    def summary(self) -> str:
        """One line naming the failed gates (or 'passed') and the figures."""
        failed = [g for g in self.gates if not g.passed]
        head = "passed" if not failed else "failed: " + ", ".join(f"{g.gate} ({g.detail or g.measured})" for g in failed)
        return f"{head}; load {self.load_s}s p50 {self.latency_p50_ms}ms p95 {self.latency_p95_ms}ms mem {self.memory_mb}MB"


def cpu_mhz(cpufreq: Path = CPUFREQ_PATH, cpuinfo: Path = CPUINFO_PATH) -> float | None:
    """Current frequency of CPU 0 in MHz (cpufreq, else /proc/cpuinfo "cpu MHz"); None where unreadable."""
    try:
        return round(int(cpufreq.read_text().strip()) / 1000.0, 1)  # the file is in kHz
    except (OSError, ValueError):
        pass
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.lower().startswith("cpu mhz"):
                return round(float(line.split(":", 1)[1]), 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def host_figures() -> dict[str, float | None]:
    """What the host exposes right now: CPU frequency (MHz) and hottest thermal zone (C), None where unreadable."""
    temp = temperature_c()
    return {"cpu_mhz": cpu_mhz(), "temperature_c": None if temp is None else round(temp, 1)}


def load_golden(files_dir: Path) -> GoldenVectors | None:
    """The bundle's golden vectors, or None when it ships none."""
    path = Path(files_dir) / GOLDEN_NAME
    if not path.is_file():
        return None
    return GoldenVectors.from_json_bytes(path.read_bytes())


def run_self_test(
    files_dir: Path,
    manifest: Manifest,
    settings: SelfTestConfig,
    runtime_factory: RuntimeFactory,
    providers: list[str],
    threads: int = 1,
    keep_runtime: bool = False,
) -> SelfTestReport:
    """Load the version at ``files_dir`` and check it against every gate; never raises for a bad model."""
    gates: list[GateResult] = []
    started = time.perf_counter()
    rss0 = rss_mb()
    t0 = time.perf_counter()
    try:
        runtime = runtime_factory(Path(files_dir) / manifest.artifact, manifest, providers, threads)
    except Exception as e:  # any load failure is a failed gate, not an agent crash
        gates.append(GateResult(gate="load", passed=False, detail=str(e)[:500]))
        return SelfTestReport(passed=False, gates=gates, seconds=round(time.perf_counter() - started, 4))
    load_s = round(time.perf_counter() - t0, 4)
    memory_mb = round(max(0.0, rss_mb() - rss0), 2)
    gates.append(GateResult(gate="load", passed=load_s <= settings.max_load_s, measured=load_s, threshold=settings.max_load_s))
    mem_limit = settings.max_memory_mb or manifest.budgets.max_memory_mb
    if mem_limit is not None:
        gates.append(GateResult(gate="memory", passed=memory_mb <= mem_limit, measured=memory_mb, threshold=mem_limit))

    try:
        golden = load_golden(files_dir)
    except Exception as e:
        gates.append(GateResult(gate="golden", passed=False, detail=f"golden.json unreadable: {e}"[:500]))
        golden = None
    cases = golden.cases if golden else []
    errors, mismatched, problems = 0, 0, []
    for inputs, expected in cases:
        try:
            actual = runtime.run(inputs)
        except InferenceError as e:
            errors += 1
            problems.append(str(e)[:200])
            continue
        found = compare_outputs(actual, expected, golden.tolerances)
        if found:
            mismatched += 1
            problems.append(str(found[0])[:200])
    gates.append(GateResult(gate="errors", passed=errors == 0, measured=float(errors), threshold=0.0, detail="; ".join(problems[:1]) if errors else ""))
    if golden is not None:
        gates.append(GateResult(gate="golden", passed=mismatched == 0 and errors == 0, measured=float(mismatched), threshold=0.0, detail="; ".join(problems[:2])))

    latencies: list[float] = []
    if cases and errors == 0:
        runtime.run(cases[0][0])  # warm-up, not timed
        for i in range(settings.latency_runs):
            inputs = cases[i % len(cases)][0]
            t = time.perf_counter()
            try:
                runtime.run(inputs)
            except InferenceError:
                errors += 1
                break
            latencies.append((time.perf_counter() - t) * 1000.0)
    p50, p95, p99 = percentile(latencies, 50), percentile(latencies, 95), percentile(latencies, 99)
    if p95 is not None:
        limit = manifest.budgets.latency_p95_ms * settings.latency_factor
        gates.append(GateResult(gate="latency_p95", passed=p95 <= limit, measured=round(p95, 3), threshold=round(limit, 3)))

    passed = all(g.passed for g in gates)
    report = SelfTestReport(
        passed=passed,
        gates=gates,
        load_s=load_s,
        latency_p50_ms=None if p50 is None else round(p50, 3),
        latency_p95_ms=None if p95 is None else round(p95, 3),
        latency_p99_ms=None if p99 is None else round(p99, 3),
        latency_runs=len(latencies),
        memory_mb=memory_mb,
        seconds=round(time.perf_counter() - started, 4),
    )
    if passed and keep_runtime:
        report.runtime, report.golden = runtime, golden
    else:
        runtime.close()
    return report
