"""Small real models trained in seconds on scikit-learn's bundled digits data set.

Used by the tests, the benchmark and the demo: no download, deterministic (fixed seeds,
single-threaded training), and real held-out data for measuring accuracy after quantization.

* :func:`train_digits_cnn`: a conv net whose compute is conv-dominated like a real edge CNN
  (the 8x8 digits are upsampled to ``size`` x ``size`` so int8 kernels have work to do).
* :func:`train_digits_transformer`: a Linear/MatMul-heavy transformer-encoder classifier that
  reads each image as a sequence of row tokens.

Both return a :class:`TrainedSample`: the eval-mode torch module plus train / validation /
calibration arrays; :meth:`TrainedSample.save_npz` writes data files `edgeops build` accepts.
``digits_cnn`` and ``digits_transformer`` are ``module:factory`` entry points
(``edgeops build edgeops.converters.samples:digits_cnn ...``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

INPUT_NAME = "input"


@dataclass
class TrainedSample:
    """A trained model with its data splits (float32 NCHW images, int64 labels)."""

    model: "object"  # torch.nn.Module in eval mode
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_calib: np.ndarray
    val_accuracy: float

    @property
    def example_inputs(self) -> tuple:
        """One-sample example input for export, shaped like the validation data."""
        import torch

        return (torch.from_numpy(self.x_val[:1].copy()),)

    def save_npz(self, folder: str | Path) -> dict[str, Path]:
        """Write calibration.npz and validation.npz (key ``input``; validation also ``labels``)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        calib = folder / "calibration.npz"
        val = folder / "validation.npz"
        np.savez(calib, **{INPUT_NAME: self.x_calib})
        np.savez(val, **{INPUT_NAME: self.x_val, "labels": self.y_val})
        return {"calibration": calib, "validation": val}


def digits_arrays(size: int = 8, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Digits as float32 [N, 1, size, size] in [0, 1], split into train / val / calibration.

    Returns ``(x_train, y_train, x_val, y_val, x_calib)``. Calibration samples come from the
    training split (never from the held-out validation split). Upsampling is bilinear.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = digits.target.astype(np.int64)
    if size != 8:
        x = _resize(x, size)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    n_val = len(x) // 5
    x_val, y_val = x[:n_val], y[:n_val]
    x_train, y_train = x[n_val:], y[n_val:]
    x_calib = x_train[:128]
    return x_train, y_train, x_val, y_val, x_calib


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = torch.nn.functional.interpolate(torch.from_numpy(x), size=(size, size), mode="bilinear", align_corners=False)
    return out.numpy().astype(np.float32)


def _build_cnn(width: int):
    import torch.nn as nn

    w = width
    # Conv-BN-ReLU stacks; BN folds into the conv at export. Global average pool + Linear head.
    def block(cin, cout, stride):
        return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    layers = block(1, w, 1) + block(w, 2 * w, 2) + block(2 * w, 2 * w, 1) + block(2 * w, 4 * w, 2) + block(4 * w, 4 * w, 1)
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, 10))



def _build_transformer(d_model: int, depth: int, heads: int):
    import torch
    import torch.nn as nn

    class EncoderBlock(nn.Module):
        """Pre-norm transformer encoder block written with plain Linear/MatMul (exports cleanly)."""

        def __init__(self, d: int, h: int):
            super().__init__()
            self.h = h
            self.norm1 = nn.LayerNorm(d)
            self.qkv = nn.Linear(d, 3 * d)
            self.proj = nn.Linear(d, d)
            self.norm2 = nn.LayerNorm(d)
            self.ff1 = nn.Linear(d, 4 * d)
            self.ff2 = nn.Linear(4 * d, d)

        def forward(self, x):
            b, t, d = x.shape
            q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
            q = q.reshape(b, t, self.h, d // self.h).transpose(1, 2)
            k = k.reshape(b, t, self.h, d // self.h).transpose(1, 2)
            v = v.reshape(b, t, self.h, d // self.h).transpose(1, 2)
            att = torch.softmax(q @ k.transpose(-1, -2) * (d // self.h) ** -0.5, dim=-1)
            y = (att @ v).transpose(1, 2).reshape(b, t, d)
            x = x + self.proj(y)
            return x + self.ff2(torch.relu(self.ff1(self.norm2(x))))

    class DigitsTransformer(nn.Module):
        """Rows of the image as tokens -> Linear embedding -> encoder blocks -> mean pool -> head."""

        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(8, d_model)
            self.pos = nn.Parameter(torch.zeros(1, 8, d_model))
            self.blocks = nn.Sequential(*[EncoderBlock(d_model, heads) for _ in range(depth)])
            self.norm = nn.LayerNorm(d_model)
            self.head = nn.Linear(d_model, 10)

        def forward(self, x):  # x: [N, 1, 8, 8]
            tokens = self.embed(x.flatten(1, 2)) + self.pos  # [N, 8 rows, 8 pixels] -> [N, 8, d]
            return self.head(self.norm(self.blocks(tokens)).mean(dim=1))

    return DigitsTransformer()


def _train(model, x_train, y_train, epochs: int, lr: float, seed: int, batch: int = 64):
    import torch

    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * ((len(x_train) + batch - 1) // batch))
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=gen).split(batch):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def _accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    return float((pred == y).mean())


def train_digits_cnn(size: int = 16, width: int = 16, epochs: int = 6, seed: int = 0) -> TrainedSample:
    """Train the digits conv net (input [1, 1, size, size]); a few seconds at the defaults."""
    import torch

    x_train, y_train, x_val, y_val, x_calib = digits_arrays(size=size, seed=seed)
    with _single_thread():
        torch.manual_seed(seed)
        model = _train(_build_cnn(width), x_train, y_train, epochs=epochs, lr=3e-3, seed=seed)
        acc = _accuracy(model, x_val, y_val)
    return TrainedSample(model, x_train, y_train, x_val, y_val, x_calib, acc)


def train_digits_transformer(d_model: int = 64, depth: int = 2, heads: int = 4, epochs: int = 12, seed: int = 0) -> TrainedSample:
    """Train the Linear-heavy transformer-encoder classifier on 8x8 digits (input [1, 1, 8, 8])."""
    import torch

    x_train, y_train, x_val, y_val, x_calib = digits_arrays(size=8, seed=seed)
    with _single_thread():
        torch.manual_seed(seed)
        model = _train(_build_transformer(d_model, depth, heads), x_train, y_train, epochs=epochs, lr=2e-3, seed=seed)
        acc = _accuracy(model, x_val, y_val)
    return TrainedSample(model, x_train, y_train, x_val, y_val, x_calib, acc)


class _single_thread:
    """Train on one thread: deterministic results and fair to the other jobs on the machine."""

    def __enter__(self):
        import torch

        self._threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self._threads)


@functools.lru_cache(maxsize=4)
def _cached_cnn(size: int, width: int, epochs: int) -> TrainedSample:
    return train_digits_cnn(size=size, width=width, epochs=epochs)


@functools.lru_cache(maxsize=4)
def _cached_transformer(d_model: int, depth: int, epochs: int) -> TrainedSample:
    return train_digits_transformer(d_model=d_model, depth=depth, epochs=epochs)


def digits_cnn():
    """``module:factory`` entry point: the trained digits CNN (16x16 input) with ``example_inputs``."""
    sample = _cached_cnn(16, 16, 6)
    sample.model.example_inputs = sample.example_inputs
    return sample.model


def digits_transformer():
    """``module:factory`` entry point: the trained digits transformer with ``example_inputs``."""
    sample = _cached_transformer(64, 2, 12)
    sample.model.example_inputs = sample.example_inputs
    return sample.model
