"""bench/ort_quant.py: the calibration reader and quant_pre_process kept to its scratch folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from bench.ort_quant import feeds_reader, pre_process


def test_the_reader_hands_out_each_feed_once_in_order():
    feeds = [{"x": np.full((1, 2), i, np.float32)} for i in range(3)]
    reader = feeds_reader(feeds)
    got = [reader.get_next() for _ in range(4)]
    assert [g["x"][0, 0] for g in got[:3]] == [0, 1, 2] and got[3] is None


def test_pre_process_writes_its_output_and_leaves_the_working_directory_alone(tmp_path, monkeypatch):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    src = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    scratch, cwd = tmp_path / "scratch", tmp_path / "cwd"
    scratch.mkdir()
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert pre_process(src, scratch / "pre.onnx", scratch) is None
    assert (scratch / "pre.onnx").exists() and os.listdir(cwd) == [] and Path.cwd() == cwd
