"""`edgeops hil run --local`: the device self-test and a benchmark of a bundle on this machine.

It runs exactly what an agent runs before activating a version (edgeops.agent.selftest), plus
a latency benchmark with p50/p95/p99, and reads the CPU frequency and temperature where the
machine exposes them.
"""

from __future__ import annotations

import socket
import tempfile
import time
from pathlib import Path

from edgeops.bundle import extract_bundle
from edgeops.errors import BundleError
from edgeops.hil.report import Check, HilReport


def run_local(bundle_path: str | Path, runs: int = 100, threads: int = 1, latency_factor: float = 1.0) -> HilReport:
    """Self-test and benchmark ``bundle_path`` here; never raises for a bad model, only reports."""
    from edgeops.agent.config import SelfTestConfig
    from edgeops.agent.runtimes import InferenceError, accelerator_fallback, execution_providers, load_runtime
    from edgeops.agent.selftest import host_figures, load_golden, run_self_test
    from edgeops.agent.system import percentile

    report = HilReport(bundle=str(bundle_path), target=f"local:{socket.gethostname()}")
    with tempfile.TemporaryDirectory(prefix="edgeops-hil-") as tmp:
        files = Path(tmp) / "bundle"
        t0 = time.perf_counter()
        try:
            manifest = extract_bundle(bundle_path, files)
        except BundleError as e:
            report.checks.append(Check("bundle_integrity", False, detail=str(e), seconds=time.perf_counter() - t0))
            return report
        report.bundle = f"{manifest.name}@{manifest.version}"
        report.checks.append(Check("bundle_integrity", True, detail=f"{len(manifest.files)} files match the manifest", seconds=time.perf_counter() - t0))

        t0 = time.perf_counter()
        settings = SelfTestConfig(latency_runs=max(1, runs), latency_factor=latency_factor)
        selftest = run_self_test(files, manifest, settings, load_runtime, manifest.providers, threads)
        elapsed = time.perf_counter() - t0
        for gate in selftest.gates:
            report.checks.append(Check(f"self_test.{gate.gate}", gate.passed, gate.measured, gate.threshold, gate.detail, seconds=elapsed / max(1, len(selftest.gates))))

        latencies: list[float] = []
        ran_on: list[str] | None = None
        golden = None
        try:
            golden = load_golden(files)
        except Exception:
            golden = None
        if selftest.load_s is not None and golden and golden.cases:
            runtime = load_runtime(files / manifest.artifact, manifest, manifest.providers, threads)
            ran_on = execution_providers(runtime)
            if ran_on is not None:
                fallback = accelerator_fallback(list(manifest.providers), ran_on)
                report.checks.append(Check("execution_provider", fallback is None, detail=fallback or f"runs on {ran_on} (the profile lists {list(manifest.providers)})"))
            try:
                runtime.run(golden.cases[0][0])
                for i in range(runs):
                    t = time.perf_counter()
                    runtime.run(golden.cases[i % len(golden.cases)][0])
                    latencies.append((time.perf_counter() - t) * 1000.0)
            except InferenceError as e:
                report.checks.append(Check("benchmark", False, detail=str(e)[:300]))
            finally:
                runtime.close()
        p50, p95, p99 = (percentile(latencies, q) for q in (50, 95, 99))
        if p95 is not None:
            budget = manifest.budgets.latency_p95_ms * latency_factor
            report.checks.append(Check("latency_p95_budget", p95 <= budget, round(p95, 3), round(budget, 3), f"p50 {p50:.3f} ms, p99 {p99:.3f} ms over {len(latencies)} runs"))
        report.figures = {
            "profile": manifest.profile,
            "runtime": manifest.runtime,
            "providers": None if ran_on is None else ",".join(ran_on),
            "load_s": selftest.load_s,
            "latency_p50_ms": None if p50 is None else round(p50, 3),
            "latency_p95_ms": None if p95 is None else round(p95, 3),
            "latency_p99_ms": None if p99 is None else round(p99, 3),
            "latency_budget_p95_ms": manifest.budgets.latency_p95_ms,
            "memory_mb": selftest.memory_mb,
            "runs": len(latencies),
            "threads": threads,
            **host_figures(),  # the same readings a device sends with a remote self-test
        }
    return report
