"""Live camera frames for the simulated devices: held-out digits with gain drift.

Each frame is a held-out digits image (never seen in training or calibration) times a gain
drawn per frame from ``gain_range`` (auto-exposure hunting, lighting), clipped to [0, 1] as a
sensor saturates. The lab data set has gain 1.0; the field does not. v1 does not care; v2's
exposure guard (see :mod:`edgeops.demo.model`) turns NaN when more pixels saturate than in any
lab image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_GAIN = (0.9, 1.4)


@dataclass
class Camera:
    """One device's camera: a deterministic stream of drifted frames (seeded per device)."""

    frames: np.ndarray  # [N, 1, H, W] float32 in [0, 1]
    labels: np.ndarray
    seed: int = 0
    gain_range: tuple[float, float] = DEFAULT_GAIN

    def __post_init__(self) -> None:
        lo, hi = self.gain_range
        if not 0 < lo <= hi:
            raise ValueError(f"gain range {self.gain_range}: expected 0 < low <= high")
        self._rng = np.random.default_rng(self.seed)
        self.count = 0

    def next(self) -> tuple[np.ndarray, int, float]:
        """(frame [1, 1, H, W] float32, true label, gain) for the next capture."""
        i = int(self._rng.integers(len(self.frames)))
        gain = float(self._rng.uniform(*self.gain_range))
        frame = np.clip(self.frames[i : i + 1] * gain, 0.0, 1.0).astype(np.float32)
        self.count += 1
        return frame, int(self.labels[i]), gain


def drifted_batch(frames: np.ndarray, n: int, seed: int = 0, gain_range: tuple[float, float] = DEFAULT_GAIN) -> np.ndarray:
    """``n`` drifted frames as one [n, 1, H, W] array (for checking a model before rollout)."""
    cam = Camera(frames, np.zeros(len(frames), dtype=np.int64), seed=seed, gain_range=gain_range)
    return np.concatenate([cam.next()[0] for _ in range(n)])
