"""Calibration and validation data for `edgeops build`.

Accepted forms:

* ``.npy``: one array, for a model with one input; axis 0 indexes samples.
* ``.npz``: one array per model input, keyed by input name (a single-input model also accepts
  one array under any key). An optional ``labels`` array (int, one per sample) turns on the
  accuracy metrics.
* a folder of images (png/jpg/bmp/...), read with pillow and preprocessed as
  :class:`ImageOptions` says (size, mean/std, layout). Images in sub-folders get the sub-folder's
  index in sorted order as label (the torchvision ImageFolder convention).

Axis 0 of every array indexes samples. If the model's first input dim is fixed at B, samples
are fed B at a time; otherwise one at a time. Shapes and dtypes are checked against the model;
a mismatch is a :class:`~edgeops.errors.DataError` naming the input.
"""

from __future__ import annotations

import hashlib
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
    """Samples for every model input (axis 0 = sample), optional labels, and the data's sha256."""

    source: str
    arrays: dict[str, np.ndarray]
    labels: np.ndarray | None
    sha256: str
    notes: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(next(iter(self.arrays.values())))

    def batches(self, specs: list[TensorSpec], limit: int | None = None) -> list[dict[str, np.ndarray]]:
        """Feeds for the model: slices of ``batch_size(specs)`` samples each."""
        b = batch_size(specs)
        n = self.count - self.count % b
        if limit is not None:
            n = min(n, limit * b)
        return [{k: v[i : i + b] for k, v in self.arrays.items()} for i in range(0, n, b)]

    def label_batches(self, specs: list[TensorSpec], limit: int | None = None) -> list[np.ndarray] | None:
        if self.labels is None:
            return None
        b = batch_size(specs)
        n = self.count - self.count % b
        if limit is not None:
            n = min(n, limit * b)
        return [self.labels[i : i + b] for i in range(0, n, b)]


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
        return _load_images(path, specs, role, image_options or ImageOptions())
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            arrays = {"__single__": np.load(path, allow_pickle=False)}
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        else:
            raise DataError(f"{role} data {path}: unknown format '{suffix}'; use .npy, .npz (arrays keyed by input name) or a folder of images")
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{role} data {path}: cannot read ({e})") from e
    labels = arrays.pop(LABELS_KEY, None)
    arrays = _match_inputs(arrays, specs, role, path)
    ds = Dataset(str(path), arrays, labels, sha256_file(path))
    _check(ds, specs, role)
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


def _check(ds: Dataset, specs: list[TensorSpec], role: str) -> None:
    counts = set()
    for spec in specs:
        arr = ds.arrays[spec.name]
        want = np.dtype(spec.dtype) if not spec.dtype.startswith("onnx-type") else None
        if want is not None and arr.dtype != want:
            # Same kind (float64 -> float32, int32 -> int64) is converted; another kind is an error.
            if arr.dtype.kind == want.kind or (arr.dtype.kind in "iu" and want.kind in "iu"):
                ds.notes.append(f"{role} input '{spec.name}': converted {arr.dtype} to {want}")
                arr = arr.astype(want)
                ds.arrays[spec.name] = arr
            else:
                raise DataError(f"{role} data {ds.source}: input '{spec.name}' has dtype {arr.dtype}, the model expects {want}")
        if arr.ndim != len(spec.shape):
            raise DataError(
                f"{role} data {ds.source}: input '{spec.name}' has shape {list(arr.shape)} (rank {arr.ndim}); the model expects rank {len(spec.shape)} {spec.shape} with samples on axis 0"
            )
        for axis, (got, expected) in enumerate(zip(arr.shape[1:], spec.shape[1:]), start=1):
            if isinstance(expected, int) and got != expected:
                raise DataError(f"{role} data {ds.source}: input '{spec.name}' has shape {list(arr.shape)}; the model expects {spec.shape} (axis {axis} must be {expected})")
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise DataError(f"{role} data {ds.source}: input '{spec.name}' contains NaN or Inf")
        counts.add(arr.shape[0])
    if len(counts) > 1:
        raise DataError(f"{role} data {ds.source}: inputs have different sample counts {sorted(counts)}")
    n = counts.pop() if counts else 0
    b = batch_size(specs)
    if n < b:
        raise DataError(f"{role} data {ds.source}: {n} samples, fewer than the model's fixed batch of {b}")
    if ds.labels is not None:
        if ds.labels.ndim != 1 or ds.labels.shape[0] != n or ds.labels.dtype.kind not in "iu":
            raise DataError(f"{role} data {ds.source}: '{LABELS_KEY}' must be a 1-D integer array with one label per sample ({n}), got {ds.labels.dtype} {list(ds.labels.shape)}")


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
    _check(ds, specs, role)
    return ds


def generated_dataset(specs: list[TensorSpec], count: int = 16, seed: int = 0) -> Dataset:
    """Random inputs shaped like the model's (dynamic dims -> 1), used when no data is given."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for spec in specs:
        dims = [d if isinstance(d, int) else 1 for d in spec.shape]
        b = dims[0] if dims else 1
        shape = [count * b] + dims[1:] if dims else [count]
        dtype = np.dtype(spec.dtype) if not spec.dtype.startswith("onnx-type") else np.dtype("float32")
        if dtype.kind == "f":
            arrays[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            arrays[spec.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            arrays[spec.name] = rng.integers(0, 4, shape).astype(dtype)
    return Dataset("generated", arrays, None, "")
