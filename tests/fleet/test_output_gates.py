"""The model-quality gates from classifier output sketches: mean top-1 confidence and class mix
of the wave against the control (issue 18), and how per-device outputs are folded from the
stored sketch bodies."""

from __future__ import annotations

import json

import pytest

from edgeops.fleet.rollouts.gates import GATES, Outcome, WaveStats
from edgeops.fleet.rollouts.output_gates import DeviceOutputs, fold_outputs
from edgeops.fleet.rollouts.records import DeviceTelemetry
from edgeops.fleet.rollouts.settings import build_settings


def cfg(**kw):
    return build_settings(bundle_name="m", bundle_version="2", **kw)


def devices(n, start=0, profile="x86"):
    return [DeviceTelemetry(f"d{start + i}", profile, 1000.0, stratum=f"profile={profile}") for i in range(n)]


def outputs(ds, conf_bin, classes, jitter=True):
    """Per device: a confidence histogram peaked at ``conf_bin`` (of 20) and class counts."""
    out = {}
    for i, d in enumerate(ds):
        conf = [0] * 20
        conf[conf_bin] = 80
        conf[min(19, conf_bin + 1)] += 20 + (i % 3 if jitter else 0) * 5
        out[d.device_id] = DeviceOutputs("probs", list(classes), conf)
    return out


def stats(new, ctl, new_out, ctl_out, size=None):
    return WaveStats(size=size or len(new), now=100.0, new_devices=new, control_devices=ctl, extra={"outputs_new": new_out, "outputs_control": ctl_out})


def test_fold_outputs_sums_the_first_classifier_output_per_device():
    body = lambda c: json.dumps({"input": {"class_counts": [], "confidence": []}, "probs": {"class_counts": c, "confidence": [0] * 19 + [sum(c)]}})  # noqa: E731
    got = fold_outputs([("a", body([1, 2])), ("a", body([3, 0])), ("b", body([0, 5])), ("c", "not json"), ("c", json.dumps({"x": {"hist": []}}))])
    assert set(got) == {"a", "b"} and got["a"].classes == [4, 2] and got["a"].inferences == 6
    assert got["a"].mean_confidence == pytest.approx(0.975) and got["b"].mix() == {"1": 5.0}
    assert DeviceOutputs("t").mean_confidence is None


def test_max_confidence_drop():
    g = GATES["max_confidence_drop"]
    c = cfg(max_confidence_drop=0.05)
    new, ctl = devices(20), devices(20, 100)
    assert g(stats(new, ctl, {}, {}), cfg()) is None
    # no sketches (a model without a classifier output): inconclusive, never a pass
    silent = g(stats(new, ctl, {}, {}), c)
    assert silent.outcome is Outcome.INCONCLUSIVE and "0 new vs 0 control" in silent.detail
    same = g(stats(new, ctl, outputs(new, 17, [50, 50]), outputs(ctl, 17, [50, 50])), c)
    assert same.outcome is Outcome.PASS and same.judgement[0]["metric"] == "top1_confidence"
    # confidence around 0.68 on the new version vs 0.88 on the control: 23% lower -> fail
    low = g(stats(new, ctl, outputs(new, 13, [50, 50]), outputs(ctl, 17, [50, 50])), c)
    assert low.outcome is Outcome.FAIL and low.measured < 0.95 and "lower" in low.detail and low.threshold == pytest.approx(0.95)


def test_max_class_mix_shift():
    g = GATES["max_class_mix_shift"]
    c = cfg(max_class_mix_shift=0.1)
    new, ctl = devices(10), devices(10, 100)
    assert g(stats(new, ctl, outputs(new, 17, [50, 50]), outputs(ctl, 17, [52, 48])), c).outcome is Outcome.PASS
    shifted = g(stats(new, ctl, outputs(new, 17, [80, 20]), outputs(ctl, 17, [50, 50])), c)
    assert shifted.outcome is Outcome.FAIL and shifted.measured == pytest.approx(0.3) and "chi-square" in shifted.detail
    # too few control devices with outputs: inconclusive
    few = g(stats(new, ctl, outputs(new, 17, [80, 20]), outputs(ctl[:3], 17, [50, 50])), c)
    assert few.outcome is Outcome.INCONCLUSIVE and "10 new vs 3 control" in few.detail
