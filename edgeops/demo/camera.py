"""Live camera frames for the simulated devices: held-out digits with gain drift.

Each frame is a held-out digits image (never seen in training or calibration) times a gain
drawn per frame from ``gain_range`` (auto-exposure hunting, lighting), clipped to [0, 1] as a
sensor saturates. The lab data set has gain 1.0; the field does not. v1 does not care; v2's
exposure guard (see :mod:`edgeops.demo.model`) turns NaN when more pixels saturate than in any
lab image. The cameras of one site (:data:`BRIGHT_GAIN`) drift brighter than the rest: the
demo's drift step finds that cohort from the devices' sketches alone.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

DEFAULT_GAIN = (0.9, 1.4)
# One site's cameras drift brighter still (a sunlit loading bay): their inputs leave the lab
# data's range far enough that the console's drift score of that cohort alerts (step 7).
BRIGHT_GAIN = (1.2, 1.8)
TRUTH_KEPT = 4096  # frames per camera whose true label is remembered (for labelling captured frames)


def frame_key(frame: np.ndarray) -> bytes:
    """A digest of one frame's float32 bytes: how a captured frame is matched to the camera's truth."""
    return hashlib.blake2b(np.ascontiguousarray(frame, dtype=np.float32).tobytes(), digest_size=16).digest()


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
        self.truth: dict[bytes, int] = {}  # frame_key -> true label of the last TRUTH_KEPT frames

    def next(self) -> tuple[np.ndarray, int, float]:
        """(frame [1, 1, H, W] float32, true label, gain) for the next capture."""
        i = int(self._rng.integers(len(self.frames)))
        gain = float(self._rng.uniform(*self.gain_range))
        frame = np.clip(self.frames[i : i + 1] * gain, 0.0, 1.0).astype(np.float32)
        self.count += 1
        self.truth[frame_key(frame)] = int(self.labels[i])
        if len(self.truth) > TRUTH_KEPT:
            self.truth.pop(next(iter(self.truth)))  # the oldest (dicts keep insertion order)
        return frame, int(self.labels[i]), gain

    def label_of(self, frame: np.ndarray) -> int | None:
        """The true label of a frame this camera produced recently, or None."""
        return self.truth.get(frame_key(frame))


def drifted_batch(frames: np.ndarray, n: int, seed: int = 0, gain_range: tuple[float, float] = DEFAULT_GAIN) -> np.ndarray:
    """``n`` drifted frames as one [n, 1, H, W] array (for checking a model before rollout)."""
    cam = Camera(frames, np.zeros(len(frames), dtype=np.int64), seed=seed, gain_range=gain_range)
    return np.concatenate([cam.next()[0] for _ in range(n)])
