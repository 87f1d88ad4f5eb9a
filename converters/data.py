"""Calibration and validation data for `edgeops build`.

Accepted forms:

* ``.npy``: one array, for a model with one input.
* ``.npz``: one array per model input, keyed by input name (a single-input model also accepts
  one array under any key). An optional ``labels`` array (int, one per sample) turns on the
  accuracy metrics.
* a folder of ``.npz`` files: one complete feed per file, each array shaped exactly like its
  input (no sample axis); shapes may differ from feed to feed (text lines of varying width).
* a folder of images (png/jpg/bmp/...), read with pillow and preprocessed as
  :class:`ImageOptions` says (size, mean/std, layout). Images in sub-folders get the sub-folder's
  index in sorted order as label (the torchvision ImageFolder convention).

Two layouts of ``.npy`` / ``.npz`` arrays, told apart by rank (see :class:`Dataset`):

* **batch**: an array of the input's rank, samples on axis 0 (the model's batch axis). If the
  model's first input dim is fixed at B, samples are fed B at a time; otherwise one at a time.
* **per-sample**: an array with one leading axis more than the input; the leading axis indexes
  samples and is stripped, so each sample is fed exactly as the model wants it: a recurrent
  state ``[2, B, 128]``, a scalar sample rate (an array of shape ``[N]`` for a ``[]`` input).

Shapes and dtypes are checked against the model; a mismatch is a
:class:`~edgeops.errors.DataError` naming the input. When no validation data is given,
:func:`generated_dataset` makes inputs shaped exactly like the model's, or says which input it
cannot make up (an integer or scalar input) or which dims are open.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgeops.bundle import TensorSpec, sha256_file
from edgeops.errors import DataError

LABELS_KEY = "labels"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class ImageOptions(BaseModel):
    """How a folder of images becomes model input: ``(pixel / 255 - mean) / std`` per channel."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    size: tuple[int, int] | None = Field(default=None, description="(height, width) to resize to; default: the model input's H and W")
    mean: tuple[float, ...] = Field(default=(0.0,), description="per-channel mean subtracted after scaling to [0, 1]")
    std: tuple[float, ...] = Field(default=(1.0,), description="per-channel std divided by")
    layout: str = Field(default="NCHW", description="NCHW or NHWC")

    @field_validator("layout")
    @classmethod
    def _layout(cls, v: str) -> str:
        if v.upper() not in ("NCHW", "NHWC"):
            raise ValueError(f"layout must be NCHW or NHWC, got {v!r}")
        return v.upper()

    @field_validator("std")
    @classmethod
    def _std(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(s == 0 for s in v):
            raise ValueError("std values must be non-zero")
        return v

    def describe(self) -> str:
        """The preprocessing in words, for the report."""
        return f"resize to {self.size or 'model H x W'} (bilinear), scale to [0,1], subtract mean {list(self.mean)}, divide by std {list(self.std)}, layout {self.layout}"


@dataclass
class Dataset:
    """Samples for every model input, optional labels, and the data's sha256.

    ``layout`` says how the arrays hold samples:

    * ``"batch"``: each array has the input's rank and axis 0 indexes samples; feeds are slices
      of :func:`batch_size` samples (the model's first axis is the batch axis).
    * ``"per-sample"``: each array (or list, for a folder of feed files) holds one complete feed
      per sample, shaped exactly like the input: a state tensor ``[2, B, 128]``, a scalar
      sample rate ``[]``. An ``.npz`` array in this layout has one leading axis more than the
      input, which is stripped.
    """

    source: str
    arrays: dict[str, np.ndarray | list[np.ndarray]]
    labels: np.ndarray | None
    sha256: str
    notes: list[str] = field(default_factory=list)
    layout: str = "batch"

    @property
    def count(self) -> int:
        return len(next(iter(self.arrays.values())))

    def _feed_count(self, specs: list[TensorSpec], limit: int | None) -> tuple[int, int]:
        """(samples per feed, number of samples used)."""
        b = 1 if self.layout == "per-sample" else batch_size(specs)
        n = self.count - self.count % b
        if limit is not None:
            n = min(n, limit * b)
        return b, n

    def batches(self, specs: list[TensorSpec], limit: int | None = None) -> list[dict[str, np.ndarray]]:
        """Feeds for the model: one sample each (per-sample) or slices of ``batch_size(specs)``."""
        b, n = self._feed_count(specs, limit)
        if self.layout == "per-sample":
            # np.asarray keeps a scalar input a 0-d array (onnxruntime refuses numpy scalars).
            return [{k: np.asarray(v[i]) for k, v in self.arrays.items()} for i in range(n)]
        return [{k: v[i : i + b] for k, v in self.arrays.items()} for i in range(0, n, b)]

    def label_batches(self, specs: list[TensorSpec], limit: int | None = None) -> list[np.ndarray] | None:
        if self.labels is None:
            return None
        b, n = self._feed_count(specs, limit)
        if self.layout == "per-sample":
            return [np.atleast_1d(self.labels[i]) for i in range(n)]
        return [self.labels[i : i + b] for i in range(0, n, b)]

    def known_dims(self, specs: list[TensorSpec], fix_batch: bool = False) -> dict[str, list[int | None]]:
        """Per input, the value the data gives each axis (None: the data leaves it open).

        In the batch layout axis 0 is the sample axis and stays open (``fix_batch``: it is the
        feed's batch, for profiles that need static shapes); in the per-sample layout an axis is
        known when every sample agrees on it.
        """
        out: dict[str, list[int | None]] = {}
        for spec in specs:
            value = self.arrays[spec.name]
            if self.layout == "batch":
                out[spec.name] = [batch_size(specs) if fix_batch else None] + [int(d) for d in value.shape[1:]]
                continue
            shapes = {tuple(np.shape(v)) for v in value}
            rank = len(spec.shape)
            out[spec.name] = [next(iter({s[a] for s in shapes})) if len({s[a] for s in shapes}) == 1 else None for a in range(rank)]
        return out


def batch_size(specs: list[TensorSpec]) -> int:
    """Samples per feed: the first input's fixed dim 0, or 1 when it is dynamic."""
    first = specs[0].shape[0] if specs and specs[0].shape else 1
    return first if isinstance(first, int) and first > 0 else 1


def load_dataset(path: str | Path, specs: list[TensorSpec], role: str, image_options: ImageOptions | None = None) -> Dataset:
    """Load and check ``path`` against the model inputs ``specs``; ``role`` names it in errors."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{role} data {path}: no such file or folder")
    if path.is_dir():
        if any(p.suffix.lower() == ".npz" for p in path.iterdir() if p.is_file()):
            return _load_feed_folder(path, specs, role)
        return _load_images(path, specs, role, image_options or ImageOptions())
    suffix = path.suffix.lower()
    arrays = _read_arrays(path, role)
    labels = arrays.pop(LABELS_KEY, None)
    arrays = _match_inputs(arrays, specs, role, path)
    ds = Dataset(str(path), arrays, labels, sha256_file(path))
    check_dataset(ds, specs, role)
    return ds


def _read_arrays(path: Path, role: str) -> dict[str, np.ndarray]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return {"__single__": np.load(path, allow_pickle=False)}
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{role} data {path}: cannot read ({e})") from e
    raise DataError(f"{role} data {path}: unknown format '{suffix}'; use .npy, .npz (arrays keyed by input name), a folder of .npz feed files or a folder of images")


def _load_feed_folder(folder: Path, specs: list[TensorSpec], role: str) -> Dataset:
    """A folder of .npz files, one complete feed each (arrays shaped exactly like the inputs)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".npz")
    others = [p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if others:
        raise DataError(f"{role} data {folder}: mixes .npz feed files with images ({others[0]} ...); keep one kind per folder")
    digest = hashlib.sha256()
    per_input: dict[str, list[np.ndarray]] = {s.name: [] for s in specs}
    labels: list[np.ndarray] = []
    for p in files:
        digest.update(p.name.encode() + b"\0" + bytes.fromhex(sha256_file(p)))
        arrays = _read_arrays(p, role)
        label = arrays.pop(LABELS_KEY, None)
        arrays = _match_inputs(arrays, specs, role, p)
        for spec in specs:
            value = arrays[spec.name]
            if value.ndim != len(spec.shape):
                raise DataError(
                    f"{role} data {p}: input '{spec.name}' has shape {list(value.shape)}; a feed file holds one feed shaped like the input "
                    f"{_dims(spec.shape)} (rank {len(spec.shape)}), without a sample axis"
                )
            per_input[spec.name].append(value)
        if label is not None:
            labels.append(np.atleast_1d(label))
    y = None
    if labels:
        if len(labels) != len(files) or len({l.shape for l in labels}) != 1:
            raise DataError(f"{role} data {folder}: '{LABELS_KEY}' must be in every feed file with the same shape")
        y = np.stack(labels)
        y = y[:, 0] if y.shape[1] == 1 else y
    ds = Dataset(str(folder), per_input, y, digest.hexdigest(), notes=[f"{role} data: {len(files)} feed files"], layout="per-sample")
    check_dataset(ds, specs, role)
    return ds


def _match_inputs(arrays: dict[str, np.ndarray], specs: list[TensorSpec], role: str, path: Path) -> dict[str, np.ndarray]:
    names = [s.name for s in specs]
    if "__single__" in arrays:
        if len(specs) != 1:
            raise DataError(f"{role} data {path}: a .npy file holds one array but the model has {len(specs)} inputs ({', '.join(names)}); use a .npz keyed by input name")
        return {names[0]: arrays["__single__"]}
    if len(specs) == 1 and names[0] not in arrays and len(arrays) == 1:
        return {names[0]: next(iter(arrays.values()))}
    missing = [n for n in names if n not in arrays]
    if missing:
        raise DataError(f"{role} data {path}: no array for model input(s) {', '.join(repr(m) for m in missing)}; the file has keys {sorted(arrays)} (add '{LABELS_KEY}' for labels)")
    return {n: arrays[n] for n in names}


def _dims(shape: list) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def describe_inputs(specs: list[TensorSpec]) -> str:
    """Every input with its dims and dtype, for error messages: ``'x' [N, 3, H, W] float32``."""
    return "; ".join(f"'{s.name}' {_dims(s.shape)} {s.dtype}" for s in specs)


def _layout_of(ds: Dataset, spec: TensorSpec, role: str) -> str:
    value = ds.arrays[spec.name]
    if isinstance(value, list):
        return "per-sample"
    rank = len(spec.shape)
    if value.ndim == rank + 1:
        return "per-sample"
    if value.ndim == rank and rank > 0:
        return "batch"
    if rank == 0:
        raise DataError(
            f"{role} data {ds.source}: input '{spec.name}' is a scalar (shape []) in the model; give one value per sample: an array of shape [N] "
            f"(got shape {list(value.shape)}), e.g. np.full(N, VALUE)"
        )
    raise DataError(
        f"{role} data {ds.source}: input '{spec.name}' has shape {list(value.shape)} (rank {value.ndim}); the model expects {_dims(spec.shape)} (rank {rank}). "
        f"Give it with samples on the model's axis 0 (rank {rank}) or with a leading sample axis in front of the input's exact shape (rank {rank + 1})"
    )


def check_dataset(ds: Dataset, specs: list[TensorSpec], role: str) -> None:
    """Check ``ds`` against the model inputs, decide its layout, convert dtypes of the same kind."""
    layouts = {spec.name: _layout_of(ds, spec, role) for spec in specs}
    if len(set(layouts.values())) > 1:
        per = [n for n, l in layouts.items() if l == "per-sample"]
        batch = [n for n, l in layouts.items() if l == "batch"]
        raise DataError(
            f"{role} data {ds.source}: input(s) {', '.join(repr(n) for n in per)} carry a leading sample axis in front of the input's shape while "
            f"{', '.join(repr(n) for n in batch)} have samples on the model's axis 0; use one form for every input: a leading sample axis "
            f"(array shape [N] + the input's shape) works for all of them ({describe_inputs(specs)})"
        )
    ds.layout = next(iter(layouts.values())) if layouts else "batch"
    if ds.layout == "batch":
        _check_batch_axis(ds, specs, role)
    counts = set()
    for spec in specs:
        value = ds.arrays[spec.name]
        value = _convert_dtype(ds, spec, value, role)
        ds.arrays[spec.name] = value
        samples = value if isinstance(value, list) else (value if ds.layout == "per-sample" else [value])
        first_axis = 0 if ds.layout == "per-sample" else 1
        for sample in samples:
            got = np.shape(sample)
            for axis, (g, expected) in enumerate(zip(got[first_axis:], spec.shape[first_axis:]), start=first_axis):
                if isinstance(expected, int) and g != expected:
                    where = "each sample of " if ds.layout == "per-sample" else ""
                    shown = list(got) if ds.layout == "per-sample" else list(np.shape(value))
                    raise DataError(
                        f"{role} data {ds.source}: {where}input '{spec.name}' has shape {shown}; the model expects {_dims(spec.shape)} (axis {axis} must be {expected})"
                    )
            if np.asarray(sample).dtype.kind == "f" and not np.all(np.isfinite(sample)):
                raise DataError(f"{role} data {ds.source}: input '{spec.name}' contains NaN or Inf")
        counts.add(len(value))
    if len(counts) > 1:
        raise DataError(f"{role} data {ds.source}: inputs have different sample counts {sorted(counts)}")
    n = counts.pop() if counts else 0
    b = 1 if ds.layout == "per-sample" else batch_size(specs)
    if n < b or n == 0:
        raise DataError(f"{role} data {ds.source}: {n} samples, fewer than the model's fixed batch of {b}")
    if ds.labels is not None:
        y = ds.labels
        if y.ndim not in (1, 2) or y.shape[0] != n or y.dtype.kind not in "iu" or (y.ndim == 2 and ds.layout == "batch"):
            raise DataError(f"{role} data {ds.source}: '{LABELS_KEY}' must be a 1-D integer array with one label per sample ({n}), got {y.dtype} {list(y.shape)}")


def _check_batch_axis(ds: Dataset, specs: list[TensorSpec], role: str) -> None:
    """In the batch layout every input's axis 0 must be the batch axis (fixed to the batch or dynamic)."""
    b = batch_size(specs)
    for spec in specs:
        first = spec.shape[0]
        if isinstance(first, int) and first != b:
            raise DataError(
                f"{role} data {ds.source}: input '{spec.name}' {_dims(spec.shape)} has {first} on axis 0, which is not the batch axis "
                f"(the feeds hold {b} sample(s)), so samples cannot be stacked on it. Give the data per sample: every array with a leading "
                f"sample axis in front of the input's exact shape (e.g. '{spec.name}' of shape [N, {', '.join(str(d) for d in spec.shape)}]), "
                f"or a folder of .npz feed files ({describe_inputs(specs)})"
            )


def _convert_dtype(ds: Dataset, spec: TensorSpec, value, role: str):
    want = np.dtype(spec.dtype) if not spec.dtype.startswith("onnx-type") else None
    have = (value[0] if isinstance(value, list) and value else value)
    have_dtype = np.asarray(have).dtype
    if want is None or have_dtype == want:
        return value
    # Same kind (float64 -> float32, int32 -> int64) is converted; another kind is an error.
    if have_dtype.kind == want.kind or (have_dtype.kind in "iu" and want.kind in "iu"):
        ds.notes.append(f"{role} input '{spec.name}': converted {have_dtype} to {want}")
        return [np.asarray(v).astype(want) for v in value] if isinstance(value, list) else value.astype(want)
    raise DataError(f"{role} data {ds.source}: input '{spec.name}' has dtype {have_dtype}, the model expects {want}")


def _load_images(folder: Path, specs: list[TensorSpec], role: str, opts: ImageOptions) -> Dataset:
    from PIL import Image

    if len(specs) != 1:
        raise DataError(f"{role} data {folder}: a folder of images feeds one input, the model has {len(specs)}")
    spec = specs[0]
    if len(spec.shape) != 4:
        raise DataError(f"{role} data {folder}: input '{spec.name}' has shape {spec.shape}; image folders need a 4-D {opts.layout} input")
    c_axis, h_axis, w_axis = (1, 2, 3) if opts.layout == "NCHW" else (3, 1, 2)
    channels = spec.shape[c_axis]
    if channels not in (1, 3):
        raise DataError(f"{role} data {folder}: input '{spec.name}' has {channels} channels on the {opts.layout} channel axis; images give 1 or 3 (check --image-layout)")
    size = opts.size or (spec.shape[h_axis], spec.shape[w_axis])
    if not all(isinstance(d, int) for d in size):
        raise DataError(f"{role} data {folder}: input '{spec.name}' has dynamic H/W; give --image-size H,W")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{role} data {folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) found")
    classes = sorted({p.parent.relative_to(folder).as_posix() for p in files} - {"."})
    mean = np.asarray(opts.mean, dtype=np.float32).reshape(-1)
    std = np.asarray(opts.std, dtype=np.float32).reshape(-1)
    digest = hashlib.sha256()
    images, labels = [], []
    for p in files:
        raw = p.read_bytes()
        digest.update(p.relative_to(folder).as_posix().encode() + b"\0" + hashlib.sha256(raw).digest())
        try:
            with Image.open(p) as im:
                im = im.convert("L" if channels == 1 else "RGB").resize((size[1], size[0]), Image.BILINEAR)
                arr = np.asarray(im, dtype=np.float32) / 255.0
        except Exception as e:
            raise DataError(f"{role} data {p}: cannot read image ({e})") from e
        arr = arr[:, :, None] if arr.ndim == 2 else arr
        arr = (arr - mean) / std
        images.append(arr.transpose(2, 0, 1) if opts.layout == "NCHW" else arr)
        if classes:
            rel = p.parent.relative_to(folder).as_posix()
            labels.append(classes.index(rel) if rel in classes else -1)
    x = np.stack(images).astype(np.float32)
    y = np.asarray(labels, dtype=np.int64) if classes and all(v >= 0 for v in labels) else None
    ds = Dataset(str(folder), {spec.name: x}, y, digest.hexdigest(), notes=[f"{role} images: {opts.describe()}"])
    check_dataset(ds, specs, role)
    return ds


# Integer inputs whose meaning the name gives away, and the values generated for them.
_MASK_NAMES = re.compile(r"mask", re.I)
_ZERO_NAMES = re.compile(r"type_ids|token_type|segment", re.I)
_POSITION_NAMES = re.compile(r"position", re.I)
_ID_NAMES = re.compile(r"(^|_)(input_ids|ids|tokens?|token_ids)$", re.I)
_BATCH_NAMES = re.compile(r"^(n|b|bs|batch|batch_?size|.*batch.*)$", re.I)
GENERATED_ID_RANGE = (1, 100)  # token ids below 100 exist in every vocabulary we know of


def batch_like_dims(specs: list[TensorSpec]) -> set[tuple[str, int]]:
    """(input, axis) of the symbolic dims that are the batch: axis 0, dims named like a batch,
    and dims sharing a name with an axis-0 dim (e.g. 'batch' in a state tensor [2, batch, 128])."""
    first_axis_names = {s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], str) and not re.fullmatch(r"dim\d+", s.shape[0])}
    out = set()
    for spec in specs:
        for axis, d in enumerate(spec.shape):
            if isinstance(d, int):
                continue
            if axis == 0 or d in first_axis_names or _BATCH_NAMES.match(d):
                out.add((spec.name, axis))
    return out


def unresolved_dims(specs: list[TensorSpec]) -> dict[str, list[int]]:
    """Inputs with symbolic dims that are not the batch, with the axes of those dims."""
    batch = batch_like_dims(specs)
    out: dict[str, list[int]] = {}
    for spec in specs:
        axes = [a for a, d in enumerate(spec.shape) if not isinstance(d, int) and (spec.name, a) not in batch]
        if axes:
            out[spec.name] = axes
    return out


def unresolved_shape_message(specs: list[TensorSpec], label: str, why: str) -> str:
    """The error text for dims nothing resolved: every input with its dims, and the flags to pass."""
    batch = batch_like_dims(specs)
    flags = []
    for spec in specs:
        if any(not isinstance(d, int) for d in spec.shape):
            dims = [str(d) if isinstance(d, int) else ("1" if (spec.name, a) in batch else f"<{d}>") for a, d in enumerate(spec.shape)]
            flags.append(f"--input-shape {spec.name}={','.join(dims)}")
    return (
        f"{label}: {why}; the model's inputs are {describe_inputs(specs)}. Fix the open dims with {' '.join(flags)} "
        "(numbers in place of <...>), or give --calibration / --validation data whose arrays have those sizes"
    )


def generated_dataset(specs: list[TensorSpec], count: int = 16, seed: int = 0, label: str = "model") -> Dataset:
    """Random inputs shaped exactly like the model's, one feed per sample (used when no data is given).

    Batch dims become 1; any other symbolic dim is a :class:`DynamicShapeError` listing every
    input. Floats are standard normal, booleans random; integer inputs get values only where the
    name says what they hold (``*mask*`` ones, ``*type_ids*`` zeros, ``*position*`` 0..L-1,
    ``input_ids``/``tokens`` small ids); other integer inputs and scalar inputs (a sample rate,
    a length, a flag) cannot be guessed: a :class:`DataError` asks for data naming them.
    """
    from edgeops.converters.errors import DynamicShapeError

    open_dims = unresolved_dims(specs)
    if open_dims:
        names = ", ".join(f"'{n}' axis {', '.join(map(str, a))}" for n, a in open_dims.items())
        raise DynamicShapeError(unresolved_shape_message(specs, label, f"cannot generate validation inputs: dims of {names} are symbolic and nothing fixes them"))
    unguessable = [s for s in specs if _generated_kind(s) is None]
    if unguessable:
        raise DataError(
            f"{label}: cannot generate validation inputs for {', '.join(f'{s.name!r} {_dims(s.shape)} {s.dtype}' for s in unguessable)}: "
            "the value of an integer or scalar input (a sample rate, a length, an id) means something to the model that random numbers do not. "
            "Pass --validation DATA (and --calibration DATA): an .npz with one array per input and a leading sample axis in front of each input's shape, "
            f"e.g. np.savez('val.npz', {', '.join(f'{s.name}=...' + (' # shape [N]' if not s.shape else '') for s in specs)}), or a folder of .npz feed files"
        )
    rng = np.random.default_rng(seed)
    arrays = {}
    for spec in specs:
        shape = tuple(d if isinstance(d, int) else 1 for d in spec.shape)
        arrays[spec.name] = _generate(spec, _generated_kind(spec), (count,) + shape, rng)
    return Dataset("generated", arrays, None, "", layout="per-sample")


def _generated_kind(spec: TensorSpec) -> str | None:
    dtype = np.dtype(spec.dtype) if not spec.dtype.startswith("onnx-type") else None
    if dtype is None:
        return None
    if not spec.shape:
        return None  # a scalar is a setting, not data
    if dtype.kind == "f":
        return "normal"
    if dtype.kind == "b":
        return "bits"
    if dtype.kind in "iu":
        for kind, pattern in (("ones", _MASK_NAMES), ("zeros", _ZERO_NAMES), ("positions", _POSITION_NAMES), ("ids", _ID_NAMES)):
            if pattern.search(spec.name):
                return kind
    return None


def _generate(spec: TensorSpec, kind: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    dtype = np.dtype(spec.dtype)
    if kind == "normal":
        return rng.standard_normal(shape).astype(dtype)
    if kind == "bits":
        return rng.integers(0, 2, shape).astype(bool)
    if kind == "ones":
        return np.ones(shape, dtype)
    if kind == "zeros":
        return np.zeros(shape, dtype)
    if kind == "positions":
        return np.broadcast_to(np.arange(shape[-1]), shape).astype(dtype).copy()
    return rng.integers(*GENERATED_ID_RANGE, shape).astype(dtype)
