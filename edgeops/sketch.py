"""Mergeable sketches of model inputs and outputs, and drift scores between two of them.

One module for the three places that need the same arithmetic: the packager builds a
*reference* sketch of each input and output from the validation data (kept in the manifest),
the agent folds every served inference into the same sketches per telemetry interval, and the
console merges intervals (per device, cohort, version) and scores them against the reference.

A tensor's sketch has two parts:

- :class:`SketchLayout`, fixed at build time from the reference data and stored with it: the
  channel axis (per channel for images, NCHW or NHWC, and per feature for small tabular
  inputs), the histogram bin edges per channel, the element stride (a fixed subsample of each
  inference's elements keeps the cost per inference bounded: a 224x224x3 image is sketched from
  ~1,000 values per channel, the same ones in the reference and on the device), and for
  classifier outputs the number of classes and whether the output is logits (softmax applied
  for the top-1 confidence) or probabilities;
- :class:`SketchState`, what is counted: rows (inferences x batch rows), per channel a
  histogram with an underflow and an overflow bin, count, sum, sum of squares, min, max; for
  classifiers the top-1 class mix and a top-1 confidence histogram; non-finite values.

Merging two states is exact: counts add as integers, min/max are taken, and every per-row sum
is first rounded to a power-of-two grid (``quantum`` in the layout) chosen so that float sums
of grid multiples are exact (below 2^53 quanta), hence associative: two intervals merged give
byte-for-byte the state of one interval over both.

Drift (:func:`score`): per channel PSI on the histograms and a Kolmogorov-Smirnov distance on
the binned CDFs with a p-value from the Kolmogorov distribution at the *effective* sample size
(rows, not elements: the values of one image are not independent), so a score on 12 inferences
is not read like one on 12,000. The binned KS distance is never larger than the exact one, so
its p-value errs on the side of "no drift".
"""

from __future__ import annotations

import hashlib
import math
from typing import Annotated, Literal

import numpy as np

from edgeops.schema import Meta, Schema, field

SKETCH_FORMAT = 1
DEFAULT_BINS = 32
MAX_BINS = 256
MAX_CHANNELS = 64  # more "channels" than this (a wide tabular input) is sketched as one
MAX_CLASSES = 4096
MAX_TENSORS = 32  # tensors a reference (and a telemetry batch) sketches; a model with more: the first ones
CONFIDENCE_BINS = 20
VALUES_PER_CHANNEL = 1024  # elements of one row sketched per channel (a fixed stride picks them)
RANGE_QUANTILES = (0.001, 0.999)  # the histogram's range from the reference, outliers to the end bins
EXACT_BITS = 17  # per-row sums are rounded to 2^-17 of their largest expected magnitude
HEADROOM_BITS = 4  # values up to 16x the reference range still sum exactly
MIN_VALUES_PER_BIN = 50  # a small reference gets fewer bins (at least MIN_BINS): PSI's noise grows with bins / samples
MIN_BINS = 8
PSI_PSEUDOCOUNT = 0.5  # added to every bin in PSI (Jeffreys): an empty bin does not give infinity

# as edgeops.protocol bounds a device's counts (COUNT_MAX): a state travels in a telemetry batch
_Count = Annotated[int, Meta(ge=0, le=2**31 - 1)]
_Float = Annotated[float, Meta(ge=-1.7976931348623157e308, le=1.7976931348623157e308)]


class SketchLayout(Schema):
    """How one tensor is sketched; fixed at build time from the reference data.

    ``edges`` are per channel, ``bins + 1`` increasing values each; ``channel_axis`` indexes the
    tensor's shape (None: the whole tensor is one channel); ``stride`` picks every stride-th
    element of a row per channel; ``quantum``/``quantum_sq`` are the grids per-row sums and sums
    of squares are rounded to (per channel). ``classes`` > 0 marks a classifier output of that
    many classes; ``logits`` whether its values need a softmax for the top-1 confidence.
    """

    name: Annotated[str, Meta(min_length=1, max_length=128)]
    channel_axis: Annotated[int, Meta(ge=0, le=31)] | None = None
    stride: Annotated[int, Meta(ge=1)] = 1
    edges: Annotated[list[Annotated[list[_Float], Meta(min_length=2, max_length=MAX_BINS + 1)]], Meta(min_length=1, max_length=MAX_CHANNELS)]
    quantum: Annotated[list[_Float], Meta(max_length=MAX_CHANNELS)]
    quantum_sq: Annotated[list[_Float], Meta(max_length=MAX_CHANNELS)]
    classes: Annotated[int, Meta(ge=0, le=MAX_CLASSES)] = 0
    logits: bool = False

    def __post_init__(self) -> None:
        bins = {len(e) for e in self.edges}
        if len(bins) != 1:
            raise ValueError("every channel needs the same number of bin edges")
        for e in self.edges:
            if any(not b > a for a, b in zip(e, e[1:])):
                raise ValueError("bin edges must increase")
        if len(self.quantum) != len(self.edges) or len(self.quantum_sq) != len(self.edges):
            raise ValueError("quantum and quantum_sq need one value per channel")
        if any(q <= 0 for q in (*self.quantum, *self.quantum_sq)):
            raise ValueError("quanta must be positive")

    @property
    def channels(self) -> int:
        """Channels sketched (1 without a channel axis)."""
        return len(self.edges)

    @property
    def bins(self) -> int:
        """Histogram bins per channel (not counting the underflow and overflow bins)."""
        return len(self.edges[0]) - 1


class SketchState(Schema):
    """What a sketch counted (see the module doc); merge with :func:`merge`.

    ``hist`` per channel has ``bins + 2`` counts: underflow, the bins, overflow.
    """

    rows: _Count = 0
    count: Annotated[list[_Count], Meta(max_length=MAX_CHANNELS)] = field(default_factory=list)
    hist: Annotated[list[Annotated[list[_Count], Meta(max_length=MAX_BINS + 2)]], Meta(max_length=MAX_CHANNELS)] = field(default_factory=list)
    sum: Annotated[list[_Float], Meta(max_length=MAX_CHANNELS)] = field(default_factory=list)
    sum_sq: Annotated[list[_Float], Meta(max_length=MAX_CHANNELS)] = field(default_factory=list)
    min: Annotated[list[_Float], Meta(max_length=MAX_CHANNELS)] = field(default_factory=list)
    max: Annotated[list[_Float], Meta(max_length=MAX_CHANNELS)] = field(default_factory=list)
    nonfinite: _Count = 0
    class_counts: Annotated[list[_Count], Meta(max_length=MAX_CLASSES)] = field(default_factory=list)
    confidence: Annotated[list[_Count], Meta(max_length=CONFIDENCE_BINS)] = field(default_factory=list)


class Reference(Schema):
    """The manifest's ``monitoring`` section: layouts and reference states of each input and
    output, and how they were made (which data, how many rows, the sketch parameters)."""

    format: Literal[1] = SKETCH_FORMAT
    source: Literal["validation", "calibration"]
    data_sha256: str | None = None
    rows: Annotated[int, Meta(ge=0)] = 0
    method: dict[str, str | int | float] = field(default_factory=dict)
    layouts: dict[str, SketchLayout] = field(default_factory=dict)
    states: dict[str, SketchState] = field(default_factory=dict)


# -- building a layout from reference data ---------------------------------------------------------

def channel_axis_for(shape: list[int | str] | tuple, classifier: bool = False) -> int | None:
    """The channel axis of a tensor shape: NCHW (axis 1) or NHWC (axis 3) images with 1-4
    channels, the feature axis of a small ``[N, F]`` tabular input; None otherwise."""
    if classifier:
        return None
    dims = list(shape)
    if len(dims) == 4:
        if isinstance(dims[1], int) and 1 <= dims[1] <= 4:
            return 1
        if isinstance(dims[3], int) and 1 <= dims[3] <= 4:
            return 3
        return None
    if len(dims) == 2 and isinstance(dims[1], int) and 1 < dims[1] <= MAX_CHANNELS:
        return 1
    return None


def _by_channel(a: np.ndarray, axis: int | None) -> np.ndarray:
    """``a`` as [rows, channels, elements] (rows: the leading axis; a scalar is one row)."""
    a = np.asarray(a)
    if a.ndim == 0:
        a = a.reshape(1)
    if axis is None or axis == 0 or axis >= a.ndim:
        return a.reshape(a.shape[0], 1, -1)
    return np.moveaxis(a, axis, 1).reshape(a.shape[0], a.shape[axis], -1)


def _grid(magnitude: float) -> float:
    """A power of two such that per-row sums up to ``magnitude`` keep EXACT_BITS bits and
    2^53 quanta leave room for 2^(53 - EXACT_BITS - HEADROOM_BITS) rows."""
    magnitude = max(float(magnitude), 1e-30)
    return float(2.0 ** (math.ceil(math.log2(magnitude)) - EXACT_BITS))


def make_layout(name: str, samples: list[np.ndarray], *, channel_axis: int | None = None, classes: int = 0, bins: int = DEFAULT_BINS) -> SketchLayout:
    """The layout of a tensor from its reference samples (a list of arrays with a leading row axis).

    Ranges are the reference's ``RANGE_QUANTILES`` per channel (outliers fall in the end bins);
    a constant channel gets a unit-wide range around its value. ``bins`` is the most: a small
    reference gets one bin per MIN_VALUES_PER_BIN values per channel (at least MIN_BINS), since
    PSI's value under no drift grows with bins / samples. Deterministic: the same samples
    give the same layout.
    """
    if not 1 <= bins <= MAX_BINS:
        raise ValueError(f"bins must be 1..{MAX_BINS}, got {bins}")
    arrays = [_by_channel(np.asarray(s, dtype=np.float64), channel_axis) for s in samples]
    if not arrays:
        raise ValueError(f"{name}: no reference samples")
    channels = arrays[0].shape[1]
    if channels > MAX_CHANNELS:
        arrays = [a.reshape(a.shape[0], 1, -1) for a in arrays]
        channels, channel_axis = 1, None
    per_row = arrays[0].shape[2]
    stride = max(1, -(-per_row // VALUES_PER_CHANNEL))
    values_per_channel = sum(a.shape[0] for a in arrays) * len(range(0, per_row, stride))
    bins = max(min(bins, MIN_BINS), min(bins, values_per_channel // MIN_VALUES_PER_BIN))
    edges, quantum, quantum_sq = [], [], []
    for c in range(channels):
        values = np.concatenate([a[:, c, ::stride].ravel() for a in arrays])
        values = values[np.isfinite(values)]
        if values.size == 0:
            lo, hi = 0.0, 1.0
        else:
            lo, hi = (float(v) for v in np.quantile(values, RANGE_QUANTILES))
            if not hi > lo:
                lo, hi = float(values.min()), float(values.max())
            if not hi > lo:
                lo, hi = lo - 0.5, hi + 0.5
        edges.append([float(v) for v in np.linspace(lo, hi, bins + 1)])
        top = max(abs(lo), abs(hi), 1e-12)
        kept = len(range(0, per_row, stride))
        quantum.append(_grid(kept * top))
        quantum_sq.append(_grid(kept * top * top))
    logits = False
    if classes:
        flat = np.concatenate([np.asarray(s, dtype=np.float64).reshape(-1, classes) for s in samples])
        finite = flat[np.all(np.isfinite(flat), axis=1)]
        probabilities = finite.size > 0 and finite.min() >= 0.0 and finite.max() <= 1.0 and np.allclose(finite.sum(axis=1), 1.0, atol=1e-3)
        logits = not probabilities
    return SketchLayout(name=name, channel_axis=channel_axis, stride=stride, edges=edges, quantum=quantum, quantum_sq=quantum_sq, classes=classes, logits=logits)


# -- folding data into a state ---------------------------------------------------------------------

class Sketcher:
    """Folds arrays into a :class:`SketchState` for one layout (the hot path on the device).

    Keeps its counts as numpy arrays between calls; :meth:`state` gives the Schema."""

    def __init__(self, layout: SketchLayout):
        self.layout = layout
        c, b = layout.channels, layout.bins
        edges = np.asarray(layout.edges, dtype=np.float64)
        inv = b / (edges[:, -1] - edges[:, 0])
        # bin position + 1 = x * scale + shift: 0 is the underflow bin, b + 1 the overflow bin
        self._scale = inv[None, :, None]
        self._shift = (1.0 - edges[:, 0] * inv)[None, :, None]
        self._offsets = (np.arange(c) * (b + 2))[None, :, None]
        self._q = np.asarray(layout.quantum, dtype=np.float64)
        self._inv_q = 1.0 / self._q  # powers of two: exact
        self._q2 = np.asarray(layout.quantum_sq, dtype=np.float64)
        self._inv_q2 = 1.0 / self._q2
        self.reset()

    def reset(self) -> None:
        """Start from an empty state."""
        c, b = self.layout.channels, self.layout.bins
        self.rows = 0
        self.nonfinite = 0
        self.hist = np.zeros(c * (b + 2), dtype=np.int64)
        self.count = np.zeros(c, dtype=np.int64)
        self.sum = np.zeros(c, dtype=np.float64)
        self.sum_sq = np.zeros(c, dtype=np.float64)
        self.min = np.full(c, np.inf)
        self.max = np.full(c, -np.inf)
        self.class_counts = np.zeros(self.layout.classes, dtype=np.int64)
        self.confidence = np.zeros(CONFIDENCE_BINS if self.layout.classes else 0, dtype=np.int64)

    def add(self, array: np.ndarray) -> None:
        """Fold one tensor (leading axis: rows) into the state.

        The hot path of the agent (once per inference per tensor): a handful of numpy calls on
        at most VALUES_PER_CHANNEL values per channel; non-finite values take a slower path."""
        lay = self.layout
        a = _by_channel(array, lay.channel_axis)
        if a.shape[1] != lay.channels:
            if a.shape[1] * a.shape[2] % lay.channels:
                raise ValueError(f"{lay.name}: {a.shape[1]} channels, the reference sketch has {lay.channels}")
            a = a.reshape(a.shape[0], lay.channels, -1)
        x = a[:, :, :: lay.stride].astype(np.float64)
        row_sum = x.sum(axis=2)
        if not np.isfinite(row_sum).all():  # a NaN/Inf among the values (or sums beyond float64)
            self._add_nonfinite(x, array)
        else:
            row_max = x.max(axis=2)
            self._fold(x, x.shape[0] * x.shape[2], row_sum, np.einsum("rce,rce->rc", x, x), x.min(axis=(0, 2)), row_max.max(axis=0), None)
            if lay.classes:
                if lay.stride == 1 and lay.channels == 1 and x.shape[2] == lay.classes:
                    self._add_classes(x.reshape(-1, lay.classes), row_max.reshape(-1))
                else:
                    self._add_classes_any(np.asarray(array))

    def _fold(self, x: np.ndarray, values: int, row_sum, row_sq, lo, hi, keep) -> None:
        lay = self.layout
        t = x * self._scale
        t += self._shift
        np.clip(t, 0.0, lay.bins + 1, out=t)  # before the cast: a huge value must not wrap around
        idx = t.astype(np.int64)  # truncation is floor here: t >= 0
        idx += self._offsets
        self.hist += np.bincount(idx.ravel() if keep is None else idx[keep], minlength=self.hist.size)
        self.rows += x.shape[0]
        self.count += values if keep is None else keep.sum(axis=(0, 2))
        # rounding each row's sums to the layout's grid makes later additions exact (module doc)
        self.sum += np.rint(row_sum * self._inv_q).sum(axis=0) * self._q
        self.sum_sq += np.rint(row_sq * self._inv_q2).sum(axis=0) * self._q2
        np.minimum(self.min, lo, out=self.min)
        np.maximum(self.max, hi, out=self.max)

    def _add_nonfinite(self, x: np.ndarray, array: np.ndarray) -> None:
        # non-finite values are counted apart, never binned nor summed
        finite = np.isfinite(x)
        self.nonfinite += int(x.size - finite.sum())
        lo = np.where(finite, x, np.inf).min(axis=(0, 2))
        hi = np.where(finite, x, -np.inf).max(axis=(0, 2))
        x = np.where(finite, x, 0.0)
        self._fold(x, 0, x.sum(axis=2), np.einsum("rce,rce->rc", x, x), lo, hi, finite)
        if self.layout.classes:
            self._add_classes_any(np.asarray(array))

    def _add_classes_any(self, array: np.ndarray) -> None:
        logits = np.asarray(array, dtype=np.float64).reshape(-1, self.layout.classes)
        logits = logits[np.all(np.isfinite(logits), axis=1)]
        if logits.size:
            self._add_classes(logits, logits.max(axis=1))

    def _add_classes(self, logits: np.ndarray, top_value: np.ndarray) -> None:
        """Top-1 class and confidence of finite rows ``logits`` [rows, classes] (``top_value``: their row maxima)."""
        top = logits.argmax(axis=1)
        if self.layout.logits:
            conf = 1.0 / np.exp(logits - top_value[:, None]).sum(axis=1)  # softmax of the top-1 class
        else:
            conf = top_value
        self.class_counts += np.bincount(top, minlength=self.layout.classes)
        bins = np.minimum((conf * CONFIDENCE_BINS).astype(np.int64), CONFIDENCE_BINS - 1)
        self.confidence += np.bincount(bins, minlength=CONFIDENCE_BINS)

    def state(self) -> SketchState:
        """The counted state as a Schema (plain ints and floats, deterministic)."""
        c, b = self.layout.channels, self.layout.bins
        hist = self.hist.reshape(c, b + 2)
        empty = self.count == 0
        return SketchState(
            rows=int(self.rows),
            count=[int(v) for v in self.count],
            hist=[[int(v) for v in row] for row in hist],
            sum=[float(v) for v in self.sum],
            sum_sq=[float(v) for v in self.sum_sq],
            min=[0.0 if e else float(v) for v, e in zip(self.min, empty)],
            max=[0.0 if e else float(v) for v, e in zip(self.max, empty)],
            nonfinite=int(self.nonfinite),
            class_counts=[int(v) for v in self.class_counts],
            confidence=[int(v) for v in self.confidence],
        )


def sketch(layout: SketchLayout, samples: list[np.ndarray]) -> SketchState:
    """The state of ``samples`` (arrays with a leading row axis) under ``layout``."""
    s = Sketcher(layout)
    for a in samples:
        s.add(a)
    return s.state()


# -- merging ---------------------------------------------------------------------------------------

def compatible(layout: SketchLayout, state: SketchState) -> bool:
    """Whether ``state`` has the shape ``layout`` makes (a device's state may come from another build)."""
    c, b = layout.channels, layout.bins
    if not state.rows:
        return True
    return (
        len(state.hist) == c and all(len(h) == b + 2 for h in state.hist)
        and all(len(v) == c for v in (state.count, state.sum, state.sum_sq, state.min, state.max))
        and len(state.class_counts) == layout.classes
        and len(state.confidence) == (CONFIDENCE_BINS if layout.classes else 0)
    )


def merge(a: SketchState, b: SketchState) -> SketchState:
    """The state of both intervals (exact: see the module doc). Empty states are identities."""
    if not a.rows and not a.nonfinite:
        return b
    if not b.rows and not b.nonfinite:
        return a
    if len(a.hist) != len(b.hist) or any(len(x) != len(y) for x, y in zip(a.hist, b.hist)) or len(a.class_counts) != len(b.class_counts):
        raise ValueError("sketches of different layouts cannot be merged")

    def lo(x: float, nx: int, y: float, ny: int) -> float:
        return y if nx == 0 else x if ny == 0 else min(x, y)

    def hi(x: float, nx: int, y: float, ny: int) -> float:
        return y if nx == 0 else x if ny == 0 else max(x, y)

    return SketchState(
        rows=a.rows + b.rows,
        count=[x + y for x, y in zip(a.count, b.count)],
        hist=[[x + y for x, y in zip(ha, hb)] for ha, hb in zip(a.hist, b.hist)],
        sum=[x + y for x, y in zip(a.sum, b.sum)],
        sum_sq=[x + y for x, y in zip(a.sum_sq, b.sum_sq)],
        min=[lo(x, nx, y, ny) for x, nx, y, ny in zip(a.min, a.count, b.min, b.count)],
        max=[hi(x, nx, y, ny) for x, nx, y, ny in zip(a.max, a.count, b.max, b.count)],
        nonfinite=a.nonfinite + b.nonfinite,
        class_counts=[x + y for x, y in zip(a.class_counts, b.class_counts)],
        confidence=[x + y for x, y in zip(a.confidence, b.confidence)],
    )


def merge_all(states: list[SketchState]) -> SketchState:
    """All of ``states`` merged (an empty state for none)."""
    out = SketchState()
    for s in states:
        out = merge(out, s)
    return out


# -- drift scores ----------------------------------------------------------------------------------

def psi(reference: list[int], current: list[int]) -> float:
    """Population stability index of two histograms: sum (q - p) ln(q / p) over the bins, with
    half a count added to every bin of both (Jeffreys smoothing: an empty bin on one side does not
    give infinity, and a sparse histogram is pulled toward the other rather than read at face
    value). 0: the same mix; ~0.1: a moderate shift; > 0.25: a large one (the usual reading),
    once both sides hold many more values than there are bins."""
    r = np.asarray(reference, dtype=np.float64)
    c = np.asarray(current, dtype=np.float64)
    if r.sum() <= 0 or c.sum() <= 0:
        return 0.0
    p = (r + PSI_PSEUDOCOUNT) / (r.sum() + PSI_PSEUDOCOUNT * r.size)
    q = (c + PSI_PSEUDOCOUNT) / (c.sum() + PSI_PSEUDOCOUNT * c.size)
    return float(np.sum((q - p) * np.log(q / p)))


def ks_distance(reference: list[int], current: list[int]) -> float:
    """Largest gap between the two binned CDFs (a lower bound of the exact KS statistic)."""
    r = np.asarray(reference, dtype=np.float64)
    c = np.asarray(current, dtype=np.float64)
    if r.sum() <= 0 or c.sum() <= 0:
        return 0.0
    return float(np.max(np.abs(np.cumsum(r) / r.sum() - np.cumsum(c) / c.sum())))


def kolmogorov_sf(lam: float) -> float:
    """P(K > lam) for the Kolmogorov distribution: 2 sum_k (-1)^(k-1) exp(-2 k^2 lam^2)."""
    if lam <= 0.0:
        return 1.0
    if lam < 0.2:  # the series converges slowly there; the value is 1 to double precision
        return 1.0
    total = 0.0
    for k in range(1, 101):
        term = 2.0 * (-1) ** (k - 1) * math.exp(-2.0 * k * k * lam * lam)
        total += term
        if abs(term) < 1e-16:
            break
    return min(1.0, max(0.0, total))


def ks_p_value(d: float, n_reference: int, n_current: int) -> float:
    """Two-sample KS p-value of distance ``d`` at effective size n m / (n + m), with Stephens'
    small-sample correction (sqrt(ne) + 0.12 + 0.11 / sqrt(ne)) d."""
    if n_reference <= 0 or n_current <= 0:
        return 1.0
    ne = n_reference * n_current / (n_reference + n_current)
    root = math.sqrt(ne)
    return kolmogorov_sf((root + 0.12 + 0.11 / root) * d)


class TensorDrift(Schema):
    """Drift of one tensor: the worst channel's PSI and KS distance, the KS p-value (Bonferroni
    over the channels and parts compared), the rows on each side, and per part the figures."""

    name: str
    psi: float
    ks: float
    p_value: float
    samples: int
    reference_samples: int
    parts: dict[str, dict[str, float]] = field(default_factory=dict)
    mean_shift: list[float] = field(default_factory=list)  # per channel, in reference standard deviations


class Drift(Schema):
    """Drift of a whole model: the worst tensor's PSI, the smallest p-value, the sample count."""

    psi: float
    ks: float
    p_value: float
    samples: int
    reference_samples: int
    tensors: dict[str, TensorDrift] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # tensors with no data or another layout


def _moments(state: SketchState) -> tuple[np.ndarray, np.ndarray]:
    n = np.maximum(np.asarray(state.count, dtype=np.float64), 1.0)
    mean = np.asarray(state.sum) / n
    var = np.maximum(np.asarray(state.sum_sq) / n - mean * mean, 0.0)
    return mean, np.sqrt(var)


def tensor_drift(layout: SketchLayout, reference: SketchState, current: SketchState) -> TensorDrift:
    """Drift of one tensor's ``current`` state against its ``reference`` (same layout)."""
    parts: dict[str, dict[str, float]] = {}
    for c in range(layout.channels):
        parts[f"channel{c}" if layout.channels > 1 else "values"] = {"psi": psi(reference.hist[c], current.hist[c]), "ks": ks_distance(reference.hist[c], current.hist[c])}
    if layout.classes:
        parts["classes"] = {"psi": psi(reference.class_counts, current.class_counts), "ks": 0.0}
        parts["confidence"] = {"psi": psi(reference.confidence, current.confidence), "ks": ks_distance(reference.confidence, current.confidence)}
    tested = [p for key, p in parts.items() if key != "classes"]  # the class mix has no order: PSI only
    p_values = [ks_p_value(p["ks"], reference.rows, current.rows) for p in tested]
    for p, pv in zip(tested, p_values):
        p["p_value"] = pv
    p_value = min(1.0, min(p_values, default=1.0) * max(len(p_values), 1))  # Bonferroni
    ref_mean, ref_std = _moments(reference)
    cur_mean, _ = _moments(current)
    shift = [float((m - r) / s) if s > 0 else 0.0 for m, r, s in zip(cur_mean, ref_mean, ref_std)]
    return TensorDrift(
        name=layout.name,
        psi=max(p["psi"] for p in parts.values()),
        ks=max(p["ks"] for p in parts.values()),
        p_value=p_value,
        samples=current.rows,
        reference_samples=reference.rows,
        parts=parts,
        mean_shift=shift,
    )


def score(reference: Reference, current: dict[str, SketchState]) -> Drift:
    """Drift of ``current`` states (by tensor name) against a bundle's reference."""
    tensors: dict[str, TensorDrift] = {}
    skipped: list[str] = []
    for name, layout in reference.layouts.items():
        state = current.get(name)
        ref = reference.states.get(name)
        if state is None or ref is None or not state.rows or not compatible(layout, state):
            skipped.append(name)
            continue
        tensors[name] = tensor_drift(layout, ref, state)
    if not tensors:
        return Drift(psi=0.0, ks=0.0, p_value=1.0, samples=0, reference_samples=reference.rows, skipped=skipped)
    p_value = min(1.0, min(t.p_value for t in tensors.values()) * len(tensors))
    return Drift(
        psi=max(t.psi for t in tensors.values()),
        ks=max(t.ks for t in tensors.values()),
        p_value=p_value,
        samples=min(t.samples for t in tensors.values()),
        reference_samples=reference.rows,
        tensors=tensors,
        skipped=skipped,
    )


def level(drift: Drift, warn_psi: float, alert_psi: float, alpha: float, min_samples: int) -> Literal["insufficient", "ok", "warn", "alert"]:
    """Read a drift score against thresholds: ``insufficient`` below ``min_samples`` rows;
    ``alert``/``warn`` when PSI reaches the threshold *and* the KS p-value is below ``alpha``
    (a large PSI on few samples is noise until the test says otherwise); else ``ok``."""
    if drift.samples < min_samples:
        return "insufficient"
    significant = drift.p_value < alpha
    if significant and drift.psi >= alert_psi:
        return "alert"
    if significant and drift.psi >= warn_psi:
        return "warn"
    return "ok"


def build_reference(
    source: Literal["validation", "calibration"],
    inputs: dict[str, list[np.ndarray]],
    outputs: dict[str, list[np.ndarray]],
    *,
    classifier_outputs: dict[str, int] | None = None,
    channel_axes: dict[str, int | None] | None = None,
    data_sha256: str | None = None,
    bins: int = DEFAULT_BINS,
) -> Reference:
    """Layouts and states of every input and output from reference samples (lists of arrays with
    a leading row axis, in feed order). Deterministic: same data, same bytes."""
    classifier_outputs = classifier_outputs or {}
    channel_axes = channel_axes or {}
    layouts: dict[str, SketchLayout] = {}
    states: dict[str, SketchState] = {}
    rows = 0
    for name, samples in (*inputs.items(), *outputs.items()):
        if name in layouts:
            raise ValueError(f"tensor name {name!r} is both an input and an output")
        classes = classifier_outputs.get(name, 0)
        axis = None if classes else channel_axes.get(name)
        layouts[name] = make_layout(name, samples, channel_axis=axis, classes=classes, bins=bins)
        states[name] = sketch(layouts[name], samples)
        rows = max(rows, states[name].rows)
    return Reference(
        source=source,
        data_sha256=data_sha256,
        rows=rows,
        method={"bins": bins, "min_values_per_bin": MIN_VALUES_PER_BIN, "range_quantiles": f"{RANGE_QUANTILES[0]},{RANGE_QUANTILES[1]}", "values_per_channel": VALUES_PER_CHANNEL, "confidence_bins": CONFIDENCE_BINS, "sketch": f"edgeops.sketch/{SKETCH_FORMAT}"},
        layouts=layouts,
        states=states,
    )


def reference_digest(reference: Reference) -> str:
    """sha256 of the reference's canonical JSON (what the console keys cached references by)."""
    return hashlib.sha256(reference.to_json().encode()).hexdigest()
