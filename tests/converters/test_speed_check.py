"""auto's int8-versus-float32 timing: the verdict rules, and the interleaving, on stand-in runners
(the timing itself is onnxruntime's, exercised by the corpus builds)."""

from __future__ import annotations

import pytest

from edgeops.converters import speed_check
from edgeops.profiles import load_profile


def _figures(int8_ms, float_ms):
    return {"int8_p50_ms": int8_ms, "float_p50_ms": float_ms, "int8_over_float": round(int8_ms / float_ms, 3), "rounds": speed_check.ROUNDS}


def test_int8_slower_beyond_the_margin_ships_float():
    verdict = speed_check.decide(_figures(1.4, 1.0), threads=1)
    assert not verdict.keep_int8 and verdict.measured and "float32 ships" in verdict.reason


def test_int8_within_the_margin_or_faster_is_kept():
    assert speed_check.decide(_figures(1.05, 1.0), threads=1).keep_int8
    assert speed_check.decide(_figures(0.4, 1.0), threads=1).keep_int8


def test_a_model_too_fast_to_time_keeps_int8_unmeasured():
    verdict = speed_check.decide(_figures(0.2, 0.1), threads=1)
    assert verdict.keep_int8 and not verdict.measured and "too fast" in verdict.reason


def test_rounds_are_interleaved_and_the_ratio_is_the_median_of_rounds():
    rounds = []

    def measure_round(runners, feed, runs):
        rounds.append(sorted(runners))
        # a noisy neighbour slows round 3 for both candidates alike
        slow = 5.0 if len(rounds) == 3 else 1.0
        return {name: (2.0 if name == "int8" else 1.0) * slow for name in runners}

    figures = speed_check.compare_int8_float("int8 runner", "float runner", {}, 3, measure_round)
    assert rounds == [["float", "int8"]] * speed_check.ROUNDS
    assert figures["int8_over_float"] == 2.0 and figures["rounds"] == speed_check.ROUNDS


def test_host_without_the_profiles_features_is_not_timed(monkeypatch):
    monkeypatch.setattr(speed_check, "host_cpu_flags", lambda: {"sse4_2"})
    verdict = speed_check.check(b"", b"", load_profile("x86_64-avx512-vnni"), {}, 50)
    assert verdict.keep_int8 and not verdict.measured and "avx512_vnni" in verdict.reason and "NOT compared" in verdict.reason


@pytest.mark.parametrize("profile", ["x86_64-avx512-vnni", "x86_64-avx2"])
def test_missing_cpu_features_names_only_what_the_host_lacks(monkeypatch, profile):
    p = load_profile(profile)
    monkeypatch.setattr(speed_check, "host_cpu_flags", lambda: set(p.device.cpu_features))
    assert speed_check.missing_cpu_features(p) == []


# --- full-graph int8 against int8 on Conv/MatMul/Gemm only ------------------------------------------

def _layouts(full_ms, weighted_ms):
    return {"full_p50_ms": full_ms, "weighted_only_p50_ms": weighted_ms, "weighted_only_over_full": round(weighted_ms / full_ms, 3), "rounds": speed_check.ROUNDS}


def test_the_weighted_only_layout_ships_only_when_faster_beyond_the_margin():
    faster = speed_check.decide_layout(_layouts(10.0, 7.8), threads=1)  # DenseNet-121's 1.70x vs 2.19x
    assert faster.use_alternative and faster.measured and "0.78x" in faster.reason
    close = speed_check.decide_layout(_layouts(10.0, 9.7), threads=1)  # within the margin: noise, not a layout
    assert not close.use_alternative and close.measured and "full-graph int8 kept" in close.reason
    assert not speed_check.decide_layout(_layouts(10.0, 11.5), threads=1).use_alternative


def test_layouts_too_fast_to_time_keep_the_full_graph_unmeasured():
    verdict = speed_check.decide_layout(_layouts(0.1, 0.05), threads=1)
    assert not verdict.use_alternative and not verdict.measured and "too fast" in verdict.reason


def test_layouts_are_not_timed_on_a_host_without_the_profiles_features(monkeypatch):
    monkeypatch.setattr(speed_check, "host_cpu_flags", lambda: {"sse4_2"})
    verdict = speed_check.compare_layouts(b"", b"", load_profile("x86_64-avx512-vnni"), {}, 50)
    assert not verdict.use_alternative and not verdict.measured and "NOT compared" in verdict.reason


def test_layout_timing_is_interleaved_per_round():
    rounds = []

    def measure_round(runners, feed, runs):
        rounds.append(list(runners))
        return {name: 1.0 for name in runners}

    made = []

    def runners_for_round():
        made.append(len(made))  # a round's runners are asked for at its start: fresh instances where the caller makes them
        return {"full": "full", "weighted_only": "weighted_only"}

    samples = speed_check.interleaved_p50s(runners_for_round, {}, 3, measure_round)
    assert len(made) == speed_check.ROUNDS
    # every round times both, the one that goes first alternating
    assert rounds == [["full", "weighted_only"], ["weighted_only", "full"]] * (speed_check.ROUNDS // 2) + [["full", "weighted_only"]] * (speed_check.ROUNDS % 2)
    assert len(samples["full"]) == speed_check.ROUNDS
    assert speed_check.round_ratio([2.0, 1.0, 9.0], [1.0, 1.0, 3.0]) == 2.0 and speed_check.round_ratio([], []) is None