"""onnxruntime quantization helpers the benchmarks share (bench/peers.py, bench/ort_int8_ceiling.py):
a calibration reader over a list of feeds, and ``quant_pre_process`` kept to a scratch folder."""

from __future__ import annotations

import contextlib
from pathlib import Path


def feeds_reader(feeds: list[dict]):
    """An onnxruntime ``CalibrationDataReader`` that hands out ``feeds`` once, in order."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    return Reader()


def pre_process(src: Path, out: Path, folder: Path) -> Exception | None:
    """onnxruntime's ``quant_pre_process`` of ``src`` into ``out``, run inside ``folder``: where its
    symbolic shape inference fails, onnxruntime saves the half-inferred model (and a uuid-named
    ``.data`` file) to the working directory, and retries with ``skip_symbolic_shape=True`` (its
    own fallback). Returns the first try's exception, or None."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with contextlib.chdir(folder):
        try:
            quant_pre_process(str(src), str(out))
            return None
        except Exception as e:
            quant_pre_process(str(src), str(out), skip_symbolic_shape=True)
            return e
