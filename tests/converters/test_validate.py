"""The parity gates (converters/validate.py) on runners whose outputs are set here: a built model
that is right on average and wrong on one feed must fail ``min_cosine``, which takes the worst feed.

Before, the gate compared the mean cosine over the feeds with the limit: PP-OCRv4 det's NNCF int8
IR shipped at mean 0.989 with one page at 0.943 (bench/peers.py on its validation feeds, 2026-12-05).
"""

from __future__ import annotations

import numpy as np

from edgeops.bundle import TensorSpec
from edgeops.converters.validate import GateLimits, compare_models, evaluate_gates

LIMITS = GateLimits(max_accuracy_drop=0.5, max_bundle_mb=50.0, min_agreement=0.98, min_cosine=0.98)


class Table:
    """A runner that answers each feed's id with a given output vector (a fake of one model)."""

    inputs = [TensorSpec(name="id", dtype="float32", shape=[1])]
    outputs = [TensorSpec(name="y", dtype="float32", shape=[1, 4, 4])]

    def __init__(self, answers: dict[int, np.ndarray]):
        self.answers = answers

    def run(self, feed):
        return {"y": self.answers[int(feed["id"][0])][None]}


def _gate(ref: dict, built: dict) -> dict:
    feeds = [{"id": np.array([i], np.float32)} for i in sorted(ref)]
    metrics, _ = compare_models(Table(ref), Table(built), feeds, None, classifier=False)
    (gate,) = [g for g in evaluate_gates(metrics, 1000, LIMITS) if g["gate"].startswith("min_cosine")]
    return gate, metrics["outputs"]["y"]


def test_one_feed_far_off_fails_the_cosine_gate_though_the_mean_passes():
    rng = np.random.default_rng(0)
    ref = {i: rng.normal(size=(4, 4)) for i in range(16)}
    built = {i: v + 0.01 * rng.normal(size=(4, 4)) for i, v in ref.items()}
    built[7] = ref[7] + 0.5 * rng.normal(size=(4, 4))  # one page the int8 model gets wrong
    gate, out = _gate(ref, built)
    assert out["cosine_mean"] >= 0.98 > out["cosine_min"]  # the mean would have passed it
    assert gate["gate"] == "min_cosine[y]" and gate["value"] == out["cosine_min"] and not gate["passed"], gate


def test_every_feed_close_passes():
    rng = np.random.default_rng(1)
    ref = {i: rng.normal(size=(4, 4)) for i in range(16)}
    gate, out = _gate(ref, {i: v + 0.01 * rng.normal(size=(4, 4)) for i, v in ref.items()})
    assert gate["passed"] and gate["value"] == out["cosine_min"] > 0.99


def test_an_output_zero_in_both_models_counts_as_equal_and_zero_in_one_as_apart():
    ones = np.ones((4, 4))
    gate, _ = _gate({0: ones, 1: np.zeros((4, 4))}, {0: ones, 1: np.zeros((4, 4))})
    assert gate["passed"] and gate["value"] == 1.0
    gate, _ = _gate({0: ones, 1: np.zeros((4, 4))}, {0: ones, 1: 1e-3 * ones})
    assert not gate["passed"] and gate["value"] == 0.0
