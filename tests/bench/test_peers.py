"""bench/peers.py's verdict on a latency ratio: faster, slower, or a tie this run cannot resolve."""

from __future__ import annotations

from bench.peers import ratio_verdict


def test_a_clearly_faster_path_is_faster_and_a_clearly_slower_one_slower():
    assert ratio_verdict([0.80, 0.82, 0.79, 0.85, 0.81, 0.80, 0.83], [1.0] * 7)["verdict"] == "faster"
    assert ratio_verdict([1.20, 1.10, 1.15, 1.30, 1.12, 1.10, 1.20], [1.0] * 7)["verdict"] == "slower"


def test_the_same_network_measured_twice_is_a_tie_whichever_way_the_median_falls():
    ours = [1.00, 1.02, 0.99, 1.01, 0.98, 1.03, 1.00]
    verdict = ratio_verdict(ours, [1.0] * 7)
    assert verdict["verdict"] == "tie"
    lo, hi = verdict["round_ratio_ci95"]
    assert lo <= verdict["round_ratio_median"] <= hi and lo < 1.0 < hi


def test_ratios_are_taken_per_round_so_load_that_slows_a_whole_round_cancels():
    ours = [0.9, 1.8, 0.9, 2.7, 0.9]  # rounds 2 and 4 ran under load: both paths slowed alike
    theirs = [1.0, 2.0, 1.0, 3.0, 1.0]
    verdict = ratio_verdict(ours, theirs)
    assert verdict["round_ratio_median"] == 0.9 and verdict["verdict"] == "faster"


class _Counting:
    """A path that records which instance ran: stands in for an OpenVINO/onnxruntime model."""

    made: list[str] = []

    def __init__(self, label):
        self.label = label
        _Counting.made.append(label)

    def run(self, feed):
        return feed


def test_fresh_instances_make_every_path_anew_each_round_and_interleave_all_of_them():
    from bench.peers import timed_rounds

    _Counting.made = []
    samples = timed_rounds(_Counting, ["a", "b", "c"], {}, rounds=4, runs=3, fresh=True)
    assert sorted(_Counting.made) == sorted(["a", "b", "c"] * 4)
    assert all(len(v) == 4 for v in samples.values())
    _Counting.made = []
    timed_rounds(_Counting, ["a", "b", "c"], {}, rounds=4, runs=3, fresh=False)
    assert sorted(_Counting.made) == ["a", "b", "c"]  # one instance a path for the whole run


def _thread_doc(x: float, geomean: float, ci: list[float], verdict: str, control: dict | None) -> dict:
    doc = {"speedup_vs_ort_fp32": {"edgeops-ov": x}, "best_peer_within_gates": "ov-nncf", "round_ratio_geomean": geomean,
           "round_ratio_ci95": ci, "verdict": verdict}
    return {**doc, "control": control} if control else doc


def test_the_markdown_table_quotes_the_json_run_cell_for_cell():
    import json

    from bench.peers import markdown_table

    run = {"results": [{
        "model": "mobilenet-v2-digits",
        "edgeops_ov": {"runtime": "openvino", "precision": "bf16", "scheme": "static-int8"},
        "edgeops_ov_2t": {"runtime": "onnxruntime", "precision": None, "scheme": "static-int8"},
        "threads": {1: {**_thread_doc(2.554, 0.981, [0.95, 0.99], "faster", {"round_ratio_geomean": 1.002, "verdict": "tie"}),
                        "edgeops_ov_speedup_rounds": {"geomean": 2.5, "ci95": [2.414, 2.6]}},
                    2: _thread_doc(1.6, 1.01, [0.97, 1.05], "tie", None)},
    }]}
    table = markdown_table(json.loads(json.dumps(run))).splitlines()  # as read back from --json: thread keys are strings
    assert len(table) == 3 and table[0].count("|") == table[1].count("|") == table[2].count("|") == 9
    assert table[2] == ("| mobilenet-v2-digits | OV bf16 int8 / ORT int8 | 2.55 (2.50 [2.41-2.60]) | ov-nncf 0.981 [0.95-0.99] **faster** | 1.002 tie "
                        "| 1.60 | ov-nncf 1.01 [0.97-1.05] tie | - |")
