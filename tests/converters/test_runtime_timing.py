"""converters/runtime.py's timing helpers: runners timed one after the other, the order rotated per round."""

from __future__ import annotations

from edgeops.converters import runtime


class _Recorder:
    """A runner that records the order of runs across all instances (stands in for a model)."""

    log: list[str] = []

    def __init__(self, name):
        self.name = name

    def run(self, feed):
        _Recorder.log.append(self.name)


def test_each_runner_is_warmed_up_then_timed_back_to_back_in_the_given_order():
    _Recorder.log = []
    p50 = runtime.p50s_in_order({"b": _Recorder("b"), "a": _Recorder("a")}, {}, runs=4, warmup=2)
    assert set(p50) == {"a", "b"} and all(v >= 0 for v in p50.values())
    assert _Recorder.log == ["b"] * 6 + ["a"] * 6


def test_rounds_start_with_a_different_runner():
    names = ["int8", "float", "ort"]
    assert [runtime.rotated(names, i) for i in range(4)] == [
        ["int8", "float", "ort"], ["float", "ort", "int8"], ["ort", "int8", "float"], ["int8", "float", "ort"]]
    assert runtime.rotated([], 3) == []


def test_a_slow_model_stops_early_after_max_seconds(monkeypatch):
    clock = {"t": 0.0}

    class Slow:
        def run(self, feed):
            clock["t"] += 1.0  # one second a run: past the deadline at once

    monkeypatch.setattr(runtime.time, "perf_counter", lambda: clock["t"])
    p50 = runtime.p50s_in_order({"slow": Slow()}, {}, runs=200, warmup=0, max_seconds=0.5)
    assert p50["slow"] == 1000.0
    assert clock["t"] < 30  # measure_latency's floor of 20 runs, not 200
