"""`--quantize auto` on onnxruntime profiles: int8 ships only where it is not measurably slower.

An int8 model that passes every gate is not always faster: onnxruntime's QDQ kernels add
QuantizeLinear/DequantizeLinear work around each int8 node, and on a small network (the
PP-OCR text-line classifier: 0.72x of fp32) or one whose time goes to float ops between the int8
convolutions, that costs more than the int8 dot products save. When the build host has every
CPU feature the profile names (so the kernels onnxruntime picks here are the device's), the
int8 and float candidates are timed side by side at the profile's thread count, in interleaved
rounds so load from other jobs hits both alike, and float ships when int8 is slower by more
than :data:`SLOWER_MARGIN`. Elsewhere (a host without the profile's features, or a model too
fast to time apart) int8 ships, and the report says latency was not compared.

The report records the decision and why, not the figures (they vary run to run and the bundle
must not); the figures go to the build output (``latency.candidates``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeops.profiles import host_cpu_flags

ROUNDS = 5
SLOWER_MARGIN = 1.10  # int8 / float p50 above this: float ships (10% covers round-to-round noise)
MIN_TIMED_MS = 0.3  # below this a single inference is mostly call overhead: too fast to time apart


@dataclass
class SpeedVerdict:
    """Whether int8 ships, with the reason, and the figures for the build output."""

    keep_int8: bool
    measured: bool
    reason: str
    figures: dict


def missing_cpu_features(profile) -> list[str]:
    """The profile's CPU features this host lacks ([] when latency measured here means something for the device)."""
    flags = host_cpu_flags()
    return [f for f in profile.device.cpu_features if f not in flags]


def interleaved_p50s(runners_for_round, feed: dict[str, np.ndarray], runs_per_round: int, measure_round) -> dict[str, list[float]]:
    """p50 ms of each runner in each of :data:`ROUNDS` rounds; every round times every runner, the
    order rotated from round to round, so load from other jobs hits all alike.
    ``runners_for_round()`` gives the round's runners by name (the same instances each time, or
    new ones: the OpenVINO choice compiles its candidates anew every round);
    ``measure_round(runners, feed, runs)`` returns a p50 per runner
    (:func:`edgeops.converters.runtime.p50s_in_order`)."""
    from edgeops.converters.runtime import rotated

    samples: dict[str, list[float]] = {}
    for i in range(ROUNDS):
        runners = runners_for_round()
        order = rotated(list(runners), i)
        for name, p50 in measure_round({name: runners[name] for name in order}, feed, runs_per_round).items():
            samples.setdefault(name, []).append(p50)
        del runners  # a round's instances go before the next round's are made: two copies of a big model cost memory
    return samples


def round_ratio(num: list[float], den: list[float]) -> float | None:
    """Median of the per-round ratios ``num / den`` (None when no round can be divided)."""
    ratios = [n / d for n, d in zip(num, den) if d > 0]
    return round(float(np.median(ratios)), 3) if ratios else None


def compare_int8_float(int8_runner, float_runner, feed: dict[str, np.ndarray], runs_per_round: int, measure_round) -> dict:
    """p50 per candidate over :data:`ROUNDS` interleaved rounds, and the median per-round ratio
    int8 / float (``measure_round`` as in :func:`interleaved_p50s`)."""
    samples = interleaved_p50s(lambda: {"int8": int8_runner, "float": float_runner}, feed, runs_per_round, measure_round)
    return {
        "int8_p50_ms": round(float(np.median(samples["int8"])), 4),
        "float_p50_ms": round(float(np.median(samples["float"])), 4),
        "int8_over_float": round_ratio(samples["int8"], samples["float"]),
        "rounds": ROUNDS,
    }


def decide(figures: dict, threads: int) -> SpeedVerdict:
    """The verdict from :func:`compare_int8_float`'s figures."""
    ratio, float_ms = figures["int8_over_float"], figures["float_p50_ms"]
    if ratio is None or float_ms < MIN_TIMED_MS:
        return SpeedVerdict(True, False, f"float32 runs in under {MIN_TIMED_MS} ms here, too fast to time int8 against it reliably: int8 kept", figures)
    if ratio > SLOWER_MARGIN:
        return SpeedVerdict(False, True, f"int8 measured {ratio}x the float32 latency on this host ({threads} thread(s), {ROUNDS} interleaved rounds; "
                            f"more than {SLOWER_MARGIN}x): float32 ships", figures)
    return SpeedVerdict(True, True, f"int8 measured {ratio}x the float32 latency on this host ({threads} thread(s), {ROUNDS} interleaved rounds): int8 kept", figures)


def check(int8_bytes: bytes, float_bytes: bytes, profile, feed: dict[str, np.ndarray], latency_runs: int) -> SpeedVerdict:
    """Time the two candidates in onnxruntime when this host has the profile's CPU features."""
    missing = missing_cpu_features(profile)
    if missing:
        return SpeedVerdict(True, False, f"this host lacks the profile's CPU feature(s) {', '.join(missing)}: int8 kept by the profile's declared scheme; latency was NOT compared", {})
    from edgeops.converters.runtime import OnnxRunner

    threads = profile.runtime.threads
    int8_runner = OnnxRunner(int8_bytes, threads=threads, label="int8 candidate")
    float_runner = OnnxRunner(float_bytes, threads=threads, label="float32 candidate")
    figures = compare_int8_float(int8_runner, float_runner, feed, *_round_timing(latency_runs))
    return decide(figures, threads)


def _round_timing(latency_runs: int):
    """(runs per round, measure_round) for timing candidates in onnxruntime, shared by :func:`check`
    and :func:`compare_layouts`: ``--latency-runs`` spread over the rounds, at least 5 each, at
    most ~1 s a candidate (a deep model's build must not take minutes to time)."""
    from edgeops.converters.runtime import p50s_in_order

    return max(5, latency_runs // ROUNDS), lambda runners, feed, runs: p50s_in_order(runners, feed, runs, warmup=2, max_seconds=1.0)


# --- which int8 layout: full graph or weighted ops only ------------------------------------------

ALTERNATIVE_MARGIN = 1.05  # the weighted-only int8 replaces the full-graph one only when this much faster


@dataclass
class LayoutVerdict:
    """Whether the weighted-only int8 model ships instead of the full-graph one, and why."""

    use_alternative: bool
    measured: bool
    reason: str
    figures: dict


def decide_layout(figures: dict, threads: int) -> LayoutVerdict:
    """The verdict from :func:`compare_layouts`' figures: the full-graph int8 model (the search's)
    unless the weighted-only one measured over :data:`ALTERNATIVE_MARGIN` faster."""
    ratio, full_ms = figures["weighted_only_over_full"], figures["full_p50_ms"]
    if ratio is None or full_ms < MIN_TIMED_MS:
        return LayoutVerdict(False, False, f"the int8 model runs in under {MIN_TIMED_MS} ms here, too fast to time two layouts apart: full-graph int8 kept", figures)
    how = f"{threads} thread(s), {ROUNDS} interleaved rounds"
    if ratio < 1 / ALTERNATIVE_MARGIN:
        return LayoutVerdict(True, True, f"int8 on Conv/MatMul/Gemm only measured {ratio}x the full-graph int8 latency on this host ({how}): it ships", figures)
    return LayoutVerdict(False, True, f"int8 on Conv/MatMul/Gemm only measured {ratio}x the full-graph int8 latency on this host ({how}; "
                         f"it must be under {round(1 / ALTERNATIVE_MARGIN, 3)}x): full-graph int8 kept", figures)


def compare_layouts(full_bytes: bytes, weighted_only_bytes: bytes, profile, feed: dict[str, np.ndarray], latency_runs: int) -> LayoutVerdict:
    """Time the full-graph and the weighted-only int8 models in onnxruntime side by side, when
    this host has the profile's CPU features (else the full-graph one is kept, unmeasured)."""
    missing = missing_cpu_features(profile)
    if missing:
        return LayoutVerdict(False, False, f"this host lacks the profile's CPU feature(s) {', '.join(missing)}: full-graph int8 kept; latency was NOT compared", {})
    from edgeops.converters.runtime import OnnxRunner

    threads = profile.runtime.threads
    runners = {"full": OnnxRunner(full_bytes, threads=threads, label="full-graph int8"),
               "weighted_only": OnnxRunner(weighted_only_bytes, threads=threads, label="weighted-only int8")}
    samples = interleaved_p50s(lambda: runners, feed, *_round_timing(latency_runs))
    figures = {"full_p50_ms": round(float(np.median(samples["full"])), 4), "weighted_only_p50_ms": round(float(np.median(samples["weighted_only"])), 4),
               "weighted_only_over_full": round_ratio(samples["weighted_only"], samples["full"]), "rounds": ROUNDS}
    return decide_layout(figures, threads)
