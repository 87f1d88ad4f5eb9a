"""The preprocess pass (quant_pre_process) leaves nothing in the user's working directory."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.slow
def test_failed_symbolic_shape_inference_leaves_no_files_in_the_working_directory(tmp_path, monkeypatch):
    # PP-OCRv4's detector is a real model onnxruntime's symbolic shape inference gives up on; it
    # then saves sym_shape_infer_temp.onnx and a <uuid>.data copy of the weights into the cwd.
    sys.path.insert(0, str(BENCH))
    try:
        import corpus
    finally:
        sys.path.remove(str(BENCH))
    from edgeops.converters.passes import Artifact, PassContext
    from edgeops.converters.passes.optimize import Preprocess

    model = corpus.fetch(corpus.by_name("ppocrv4-det"))
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    ctx = PassContext(profile=None)
    out = Preprocess().run(Artifact("onnx", data=model.read_bytes()), ctx)
    assert out.data
    assert "symbolic shape inference failed" in " ".join(ctx.warnings)  # the case that left files behind
    assert sorted(os.listdir(work)) == []
    assert Path.cwd() == work
