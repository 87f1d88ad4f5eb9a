"""Validation of a built model against the original, and the gates that decide the build.

Both models run in the real runtime on the same feeds. Metrics per output: cosine similarity
(mean and worst over feeds), max and mean absolute error; for classifiers (one 2-D output
[N, classes]) top-1 agreement, and accuracy / accuracy drop when labels are given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeops.bundle import TensorSpec


def is_classifier(outputs: list[TensorSpec]) -> bool:
    """One output shaped [N, classes] with a fixed class count above 1."""
    if len(outputs) != 1 or len(outputs[0].shape) != 2:
        return False
    classes = outputs[0].shape[1]
    return isinstance(classes, int) and classes > 1


def output_pairs(ref_outputs: list[TensorSpec], built_outputs: list[TensorSpec]) -> list[tuple[str, str]]:
    """(reference name, built name) per output: by name when they match, else by position."""
    ref = [o.name for o in ref_outputs]
    built = [o.name for o in built_outputs]
    if sorted(ref) == sorted(built):
        return [(n, n) for n in ref]
    return list(zip(ref, built))


def compare_models(ref, built, feeds: list[dict[str, np.ndarray]], labels: list[np.ndarray] | None, classifier: bool) -> tuple[dict, list[dict[str, np.ndarray]]]:
    """Run both runners on every feed; return (metrics, built outputs per feed)."""
    pairs = output_pairs(ref.outputs, built.outputs)
    cos: dict[str, list[float]] = {b: [] for _, b in pairs}
    max_abs = {b: 0.0 for _, b in pairs}
    sum_abs = {b: 0.0 for _, b in pairs}
    count = {b: 0 for _, b in pairs}
    ref_top, built_top, built_outputs = [], [], []
    nonfinite = nonfinite_original = 0
    for feed in feeds:
        r = ref.run(feed)
        b = built.run(_feed_for(built, feed))
        built_outputs.append(b)
        for rn, bn in pairs:
            rv = np.asarray(r[rn], dtype=np.float64)
            bv = np.asarray(b[bn], dtype=np.float64)
            if rv.shape != bv.shape:
                raise ValueError(f"output '{bn}' has shape {list(bv.shape)} in the built model and {list(rv.shape)} in the original")
            finite_r, finite_b = np.isfinite(rv), np.isfinite(bv)
            if not finite_b.all() and not same_nonfinite(rv, bv):
                nonfinite += 1  # the built model broke where the original did not: the finite_outputs gate fails
                continue
            if not finite_r.all():
                # NaN/Inf in the original too (at the same places, or where the built model is
                # finite): the errors are measured where both are finite.
                nonfinite_original += 1
                keep = finite_r & finite_b
                rv, bv = np.where(keep, rv, 0.0), np.where(keep, bv, 0.0)
            diff = np.abs(rv - bv)
            max_abs[bn] = max(max_abs[bn], float(diff.max()) if diff.size else 0.0)
            sum_abs[bn] += float(diff.sum())
            count[bn] += diff.size
            for i in range(rv.shape[0] if rv.ndim else 1):
                x, y = (rv[i], bv[i]) if rv.ndim else (rv, bv)
                cos[bn].append(_cosine(x.ravel(), y.ravel()))
        if classifier:
            (rn, bn), = pairs
            ref_top.append(np.asarray(r[rn]).argmax(axis=1))
            built_top.append(np.asarray(b[bn]).argmax(axis=1))
    metrics: dict = {
        "feeds": len(feeds),
        "nonfinite_outputs": nonfinite,
        "nonfinite_in_original": nonfinite_original,
        "outputs": {
            bn: {
                "cosine_mean": _r(np.mean(cos[bn])) if cos[bn] else None,
                "cosine_min": _r(np.min(cos[bn])) if cos[bn] else None,
                "max_abs_error": _r(max_abs[bn]),
                "mean_abs_error": _r(sum_abs[bn] / max(count[bn], 1)),
            }
            for _, bn in pairs
        },
    }
    if classifier and ref_top:
        rt, bt = np.concatenate(ref_top), np.concatenate(built_top)
        metrics["top1_agreement"] = _r(float((rt == bt).mean()))
        if labels is not None:
            y = np.concatenate(labels)
            metrics["accuracy_original"] = _r(float((rt == y).mean()))
            metrics["accuracy_built"] = _r(float((bt == y).mean()))
            metrics["accuracy_drop_points"] = _r(100.0 * (metrics["accuracy_original"] - metrics["accuracy_built"]))
    return metrics, built_outputs


def same_nonfinite(a: np.ndarray, b: np.ndarray) -> bool:
    """True when ``a`` and ``b`` are NaN / +Inf / -Inf at exactly the same places."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and bool(
        np.array_equal(np.isnan(a), np.isnan(b)) and np.array_equal(np.isposinf(a), np.isposinf(b)) and np.array_equal(np.isneginf(a), np.isneginf(b))
    )


def _feed_for(runner, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [i.name for i in runner.inputs]
    if set(names) == set(feed):
        return feed
    return dict(zip(names, feed.values()))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def _r(x: float) -> float:
    """Round for the report: stable text, no false precision."""
    return float(round(float(x), 6))


@dataclass(frozen=True)
class GateLimits:
    """Thresholds of the build gates: the profile's budgets, overridden by CLI options."""

    max_accuracy_drop: float
    max_bundle_mb: float
    min_agreement: float
    min_cosine: float

    @classmethod
    def from_profile(cls, profile, max_accuracy_drop: float | None = None, max_size_mb: float | None = None,
                     min_agreement: float | None = None, min_cosine: float | None = None) -> "GateLimits":
        b = profile.budgets
        return cls(
            max_accuracy_drop=b.max_accuracy_drop if max_accuracy_drop is None else max_accuracy_drop,
            max_bundle_mb=b.max_bundle_mb if max_size_mb is None else max_size_mb,
            min_agreement=b.min_agreement if min_agreement is None else min_agreement,
            min_cosine=b.min_cosine if min_cosine is None else min_cosine,
        )


def evaluate_gates(metrics: dict, bundle_bytes: int, limits: GateLimits) -> list[dict]:
    """One row per gate that applies: name, value, limit, passed."""
    rows = []

    def gate(name, value, limit, ok, unit=""):
        rows.append({"gate": name, "value": value, "limit": limit, "unit": unit, "passed": bool(ok)})

    if "accuracy_drop_points" in metrics:
        gate("max_accuracy_drop", metrics["accuracy_drop_points"], limits.max_accuracy_drop, metrics["accuracy_drop_points"] <= limits.max_accuracy_drop, "points")
    if "top1_agreement" in metrics:
        gate("min_agreement", metrics["top1_agreement"], limits.min_agreement, metrics["top1_agreement"] >= limits.min_agreement)
    for name, out in metrics["outputs"].items():
        # the worst feed, not the mean: a text detector's int8 IR at mean 0.989 had one page at
        # 0.943 (PP-OCRv4 det, bench/peers.py 2026-12-05), which a mean gate let ship
        if out["cosine_min"] is not None:
            gate(f"min_cosine[{name}]", out["cosine_min"], limits.min_cosine, out["cosine_min"] >= limits.min_cosine)
    if metrics.get("nonfinite_outputs"):
        gate("finite_outputs", metrics["nonfinite_outputs"], 0, False, "feeds")
    size_mb = round(bundle_bytes / 1e6, 4)
    gate("max_bundle_mb", size_mb, limits.max_bundle_mb, size_mb <= limits.max_bundle_mb, "MB")
    return rows


def format_gate_failures(rows: list[dict]) -> str:
    """A plain-text table of the failed gates, for the error message."""
    failed = [r for r in rows if not r["passed"]]
    lines = [f"  {'gate':<28} {'value':>12} {'limit':>12}"]
    for r in failed:
        lines.append(f"  {r['gate']:<28} {r['value']!s:>12} {r['limit']!s:>12} {r['unit']}")
    return "\n".join(lines)
