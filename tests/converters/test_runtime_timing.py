"""converters/runtime.py's p50s_in_turns: candidates timed in short turns, each turn's first run untimed."""

from __future__ import annotations

from edgeops.converters import runtime


class _Recorder:
    """A runner that records the order of runs across all instances (stands in for a model)."""

    log: list[str] = []

    def __init__(self, name):
        self.name = name

    def run(self, feed):
        _Recorder.log.append(self.name)


def test_runners_take_turns_of_five_and_each_gets_its_timed_runs():
    _Recorder.log = []
    p50 = runtime.p50s_in_turns({"a": _Recorder("a"), "b": _Recorder("b")}, {}, runs=8, warmup=1)
    assert set(p50) == {"a", "b"} and all(v >= 0 for v in p50.values())
    after_warmup = _Recorder.log[2:]
    # a turn: one untimed run that brings the model back into cache, then up to TURN-1 timed ones
    assert after_warmup == ["a"] * 5 + ["b"] * 5 + ["a"] * 5 + ["b"] * 5
    assert runtime.TURN == 5


def test_a_burst_of_load_lands_on_every_runner_alike(monkeypatch):
    """A slow period lasting one turn pair slows a few runs of each runner, not all of one."""
    clock = {"t": 0.0, "runs": 0}

    class Timed:
        def __init__(self, cost):
            self.cost = cost

        def run(self, feed):
            clock["runs"] += 1
            slow = 10.0 if 40 <= clock["runs"] < 60 else 1.0  # a noisy neighbour for 20 runs
            clock["t"] += self.cost * slow

    monkeypatch.setattr(runtime.time, "perf_counter", lambda: clock["t"])
    p50 = runtime.p50s_in_turns({"fast": Timed(0.001), "slow": Timed(0.002)}, {}, runs=40, warmup=0)
    assert round(p50["slow"] / p50["fast"], 6) == 2.0


def test_an_early_stop_waits_for_a_minimum_of_timed_runs(monkeypatch):
    clock = {"t": 0.0}

    class Slow:
        def run(self, feed):
            clock["t"] += 1.0  # one second a run: past the deadline at once

    monkeypatch.setattr(runtime.time, "perf_counter", lambda: clock["t"])
    counted = {}

    original = runtime.np.median

    def median(values):
        counted[len(counted)] = len(values)
        return original(values)

    monkeypatch.setattr(runtime.np, "median", median)
    runtime.p50s_in_turns({"a": Slow(), "b": Slow()}, {}, runs=200, warmup=0, max_seconds=0.5)
    assert sorted(counted.values()) == [runtime.MIN_TIMED_RUNS, runtime.MIN_TIMED_RUNS]
