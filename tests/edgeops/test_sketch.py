"""edgeops.sketch: layouts from reference data, exact merges, drift scores and their sample size."""

from __future__ import annotations

import numpy as np
import pytest

from edgeops import sketch as sk
from edgeops.schema import SchemaError


def _images(rng, n, shift=0.0, scale=1.0, nhwc=False):
    """Images like a camera's after normalisation: per channel a different mean."""
    out = []
    for _ in range(n):
        base = rng.normal(0.0, 1.0, (1, 3, 32, 32)) * np.array([0.2, 0.25, 0.3])[None, :, None, None] + np.array([0.4, 0.5, 0.6])[None, :, None, None]
        img = (base * scale + shift).astype(np.float32)
        out.append(np.transpose(img, (0, 2, 3, 1)) if nhwc else img)
    return out


def test_channel_axis_from_the_shape():
    assert sk.channel_axis_for([1, 3, 224, 224]) == 1
    assert sk.channel_axis_for([1, 224, 224, 3]) == 3
    assert sk.channel_axis_for(["N", 12]) == 1
    assert sk.channel_axis_for([1, 1000], classifier=True) is None
    assert sk.channel_axis_for([1, 128, 768]) is None


def test_per_channel_nchw_and_nhwc_agree():
    rng = np.random.default_rng(1)
    nchw = _images(rng, 20)
    nhwc = [np.transpose(a, (0, 2, 3, 1)) for a in nchw]
    a = sk.make_layout("x", nchw, channel_axis=1)
    b = sk.make_layout("x", nhwc, channel_axis=3)
    assert a.channels == b.channels == 3
    assert a.edges == b.edges  # the same values per channel whatever the layout
    sa, sb = sk.sketch(a, nchw), sk.sketch(b, nhwc)
    assert sa.count == sb.count and sa.min == sb.min and sa.max == sb.max
    means = np.asarray(sa.sum) / np.asarray(sa.count)
    assert np.allclose(means, [0.4, 0.5, 0.6], atol=0.02)


def test_merge_of_two_intervals_is_one_interval_over_both():
    rng = np.random.default_rng(2)
    data = _images(rng, 57)
    layout = sk.make_layout("x", data[:20], channel_axis=1)
    whole = sk.sketch(layout, data)
    for cut in (1, 13, 40):
        merged = sk.merge(sk.sketch(layout, data[:cut]), sk.sketch(layout, data[cut:]))
        assert merged == whole  # every field, the float sums included
        assert merged.to_json() == whole.to_json()
    # three ways, in another order
    parts = [sk.sketch(layout, data[i : i + 19]) for i in (0, 19, 38)]
    assert sk.merge_all([parts[2], parts[0], parts[1]]) == whole


def test_classifier_output_class_mix_and_confidence():
    rng = np.random.default_rng(3)
    logits = [rng.normal(0, 1, (4, 10)).astype(np.float32) for _ in range(30)]
    layout = sk.make_layout("y", logits, classes=10)
    assert layout.logits and layout.classes == 10
    state = sk.sketch(layout, logits)
    assert state.rows == 120 and sum(state.class_counts) == 120 and sum(state.confidence) == 120
    probs = [np.exp(a) / np.exp(a).sum(axis=1, keepdims=True) for a in logits]
    layout_p = sk.make_layout("y", probs, classes=10)
    assert not layout_p.logits
    state_p = sk.sketch(layout_p, probs)
    assert state_p.class_counts == state.class_counts and state_p.confidence == state.confidence


def test_nonfinite_values_counted_apart():
    layout = sk.make_layout("x", [np.array([[0.0, 1.0, 2.0, 3.0]])])
    state = sk.sketch(layout, [np.array([[np.nan, 1.0, np.inf, 1e300]])])
    assert state.nonfinite == 2 and state.count == [2]
    assert state.hist[0][-1] == 1  # 1e300: the overflow bin, not a wrapped-around index
    assert state.max == [1e300]


def test_drift_near_zero_on_the_reference_and_high_on_shifted_data():
    rng = np.random.default_rng(4)
    reference_data = _images(rng, 300)
    ref = sk.build_reference("validation", {"x": reference_data}, {}, channel_axes={"x": 1})
    same = sk.score(ref, {"x": sk.sketch(ref.layouts["x"], _images(rng, 300))})
    itself = sk.score(ref, {"x": ref.states["x"]})
    assert itself.psi == 0.0 and itself.ks == 0.0 and itself.p_value == 1.0
    assert same.psi < 0.02 and same.p_value > 0.05
    brighter = sk.score(ref, {"x": sk.sketch(ref.layouts["x"], _images(rng, 300, shift=0.3))})
    assert brighter.psi > 1.0 and brighter.p_value < 1e-6
    assert all(s > 1.0 for s in brighter.tensors["x"].mean_shift)
    assert sk.level(brighter, 0.1, 0.25, 0.01, 100) == "alert"
    assert sk.level(same, 0.1, 0.25, 0.01, 100) == "ok"


def _rows(rng, n, shift=0.0):
    """``n`` small 3-channel images in one array (rows on the leading axis)."""
    return [(rng.normal(0.5, 0.2, (n, 3, 8, 8)) + shift).astype(np.float32)]


def test_small_samples_are_not_read_like_large_ones():
    rng = np.random.default_rng(5)
    ref = sk.build_reference("validation", {"x": _rows(rng, 20000)}, {}, channel_axes={"x": 1})
    layout = ref.layouts["x"]
    shifted = _rows(rng, 12000, shift=0.04)[0]
    few = sk.score(ref, {"x": sk.sketch(layout, [shifted[:12]])})
    many = sk.score(ref, {"x": sk.sketch(layout, [shifted])})
    assert few.samples == 12 and many.samples == 12000
    # a distance of about the same size means little on 12 rows and a lot on 12,000
    assert abs(few.ks - many.ks) < 0.05 and many.ks > 0.05
    assert few.p_value > 0.05 and many.p_value < 1e-9
    assert sk.level(few, 0.01, 0.02, 0.01, min_samples=10) == "ok"
    assert sk.level(few, 0.01, 0.02, 0.01, min_samples=100) == "insufficient"
    assert sk.level(many, 0.01, 0.02, 0.01, min_samples=100) == "alert"
    # and the p-value follows the effective size of the two samples
    assert sk.ks_p_value(0.2, 1000, 12) > 0.5 > 0.001 > sk.ks_p_value(0.2, 1000, 12000)


def test_kolmogorov_distribution_known_values():
    # P(K > 1.36) ~ 0.049, P(K > 1.63) ~ 0.0098 (the 5% and 1% critical values)
    assert sk.kolmogorov_sf(1.36) == pytest.approx(0.0494, abs=5e-4)
    assert sk.kolmogorov_sf(1.63) == pytest.approx(0.0098, abs=5e-4)
    assert sk.kolmogorov_sf(0.0) == 1.0


def test_reference_is_deterministic():
    def build():
        rng = np.random.default_rng(6)
        logits = [rng.normal(0, 1, (2, 5)).astype(np.float32) for _ in range(10)]
        return sk.build_reference("validation", {"x": _images(rng, 10)}, {"y": logits}, classifier_outputs={"y": 5}, channel_axes={"x": 1}, data_sha256="ab" * 32)

    a, b = build(), build()
    assert a.to_json() == b.to_json() and sk.reference_digest(a) == sk.reference_digest(b)
    assert sk.Reference.parse_json(a.to_json()) == a


def test_layout_and_state_are_bounded():
    layout = sk.make_layout("x", [np.zeros((1, 4))])
    with pytest.raises(SchemaError):
        sk.SketchLayout.parse({**layout.to_dict(), "edges": [[0.0, 1.0]] * (sk.MAX_CHANNELS + 1)})
    with pytest.raises(SchemaError):
        sk.SketchState.parse({"rows": 1, "hist": [[1] * (sk.MAX_BINS + 3)]})
    with pytest.raises(SchemaError):
        sk.SketchLayout.parse({**layout.to_dict(), "edges": [[1.0, 0.0]]})
    with pytest.raises(ValueError):
        sk.merge(sk.SketchState(rows=1, hist=[[1, 0]]), sk.SketchState(rows=1, hist=[[1, 0, 0]]))
