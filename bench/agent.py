"""Device agent benchmark: update time, rollback time and memory of real agents, in one run.

    python bench/agent.py [--size-mb 20] [--repeats 5] [--json] [--save FILE]
    python bench/agent.py --quick --json        # 2 MB bundle, 1 repeat, 96 px MobileNetV2 (smoke test)
    python bench/agent.py --parts update --broker-nagle   # what mosquitto's default Nagle costs

Real parts only: a mosquitto on a free port, the fleet console (``edgeops fleet serve``, its
own process) serving the TUF repository over MQTT and HTTP, device agents started as
``edgeops agent run --config agent.toml`` subprocesses, bundles published into a real TUF
repository, DSSE-signed commands published to the devices' command topics.

1. **Assignment to serving.** A ~SIZE MB bundle (an ONNX MLP with random weights, golden
   vectors computed by onnxruntime) is assigned to one agent that fetches over MQTT and one
   that fetches over HTTP, interleaved, ``--repeats`` times (each repeat a new version).
   Timed from publishing the signed ``assign`` command to the agent's local inference API
   answering from the new version. Next to it, in the same run: ``cp`` of the same bundle
   file plus its sha256 (``sha256sum``, and Python's ``hashlib``). Median of the repeats and
   the ratio. The agent's state transitions (its log) break the time down by phase:
   command (delivery, DSSE check, main-loop wake-up), fetch (TUF refresh, download with
   length/sha256 check, fsync), verify (target + manifest), install (extract into the
   store), self-test (load, golden vectors, latency runs), activate (swap, probation window
   opened with the previous version loaded for shadow runs, first answer).
2. **Failed gate to the old version serving.** A version that emits NaN on inputs above a
   trigger value (its golden vectors pass the self-test, as a real in-model fault would) is
   assigned; as soon as it serves, one live inference with the trigger is sent; timed to the
   inference API answering from the old version again, from the agent's ``probation_failed``
   event and from the moment the NaN-producing request was sent. Target: < 0.5 s.
3. **Agent RSS**: a fresh agent idle with no model, then serving an int8 MobileNetV2
   (3.5M parameters, built by ``edgeops build`` from a MobileNetV2-shaped network with random
   weights); the peak while it installs; and the two agents of 1 and 2 after all their
   updates. Once per runtime: onnxruntime (profile x86_64-avx512-vnni, static int8) and
   LiteRT with XNNPACK (profile arm64-litert, the runtime of Arm boards, dynamic-range int8;
   part ``rss-litert``), and OpenVINO with NNCF int8 (profile x86_64-openvino-int8, part
   ``rss-openvino``, not in the default parts: ``--parts rss,rss-openvino``). Target: < 100 MB = 95.4 MiB (figures are MiB, as /proc reports).
   RSS counts the pages of shared libraries a process maps, and how many the kernel maps
   per fault depends on how the file sits in the page cache: a library pip has just written
   is cached in large folios and onnxruntime's maps 27.8 MiB, the same library read back
   through page faults (a device after a reboot) 20.7 MiB. So before each RSS part the bench
   drops the installed packages' libraries from the page cache (``posix_fadvise``
   DONTNEED: the state after a reboot) for the agent and the bare floor alike;
   ``--page-cache as-is`` measures whatever state the machine is in.

4. **Drift sketching per inference** (part ``sketch``): the int8 MobileNetV2 bundle of 3
   (224 px, its manifest's drift reference built from the validation images) served in
   onnxruntime in this process with the profile's threads; per inference the agent's
   telemetry collector with and without folding the input and output into the reference's
   sketches. The added time over the inference time. Target: < 5%.

5. **Data capture** (part ``capture``): 224x224x3 uint8 frames (and 1000 class
   probabilities) captured by the agent's capturer under a random-share policy: the time per
   sample (npz encode, sealed box to the console's key, SQLite spool), the sealed size and the
   spool's bytes on disk per sample, scaled to 1 sample/s; then the spool uploaded through the
   mosquitto by the agent's MQTT session and uploader into the console's store (chunks, each
   sample acknowledged after it is stored).

The broker runs with ``set_tcp_nodelay true`` (mosquitto's default leaves Nagle on, which
makes the MQTT fetch several times slower; ``--broker-nagle`` measures that). Times in the
agent's log have millisecond resolution; the bench polls the inference API every 5 ms
(``/v1/health`` while waiting, then ``/v1/infer`` to confirm the answering version). Exit
status 1 means a target was missed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

PROFILE = "x86_64-avx512-vnni"
N_IN, N_OUT = 256, 10
TRIGGER = 100.0  # inputs with a value above this make the faulty version emit NaN
POLL_S = 0.005
ROLLBACK_TARGET_S = 0.5
RSS_TARGET_MB = 100.0
SKETCH_TARGET = 0.05  # sketching adds under 5% to an int8 MobileNetV2 inference
RSS_TARGET_MIB = RSS_TARGET_MB * 1e6 / 2**20  # the target is MB; /proc reports KiB
OPENVINO_PROFILE = "x86_64-openvino-int8"  # OpenVINO + NNCF int8 (part rss-openvino)
LITERT_PROFILE = "arm64-litert"  # runs on x86 too: LiteRT's XNNPACK delegate has x86 kernels
PHASES = [("command", "fetching"), ("fetch", "verifying"), ("verify", "installing"), ("install", "self-testing"), ("self_test", "activating")]


def log(msg: str) -> None:
    """Progress to stderr (stdout carries the table or the JSON)."""
    print(f"[bench/agent] {msg}", file=sys.stderr, flush=True)


# --- models and bundles ---------------------------------------------------------------------


def mlp_hidden_width(size_mb: float) -> int:
    """Hidden width h of the MLP 256 -> h -> h -> 256 -> 10 whose float32 weights take ~size_mb."""
    params = size_mb * 1e6 / 4
    return max(16, int((-2 * N_IN + ((2 * N_IN) ** 2 + 4 * params) ** 0.5) / 2))


def make_mlp(size_mb: float, variant_seed: int, trigger: float | None = None) -> bytes:
    """An ONNX MLP classifier (opset 17) of ~size_mb MB with random weights.

    Every version shares the base weights (seed 0) plus a small per-version perturbation, so
    versions differ byte for byte but agree on their top-1 class, as a retrained model would
    (the probation agreement gate compares them). ``trigger``: outputs turn NaN when
    max(input) > trigger (``Sqrt(-Relu(max(x) - trigger))`` added to the logits), and are
    unchanged otherwise.
    """
    from onnx import TensorProto, helper, numpy_helper

    h = mlp_hidden_width(size_mb)
    base = np.random.default_rng(0)
    tweak = np.random.default_rng(1000 + variant_seed)
    dims = [N_IN, h, h, N_IN, N_OUT]
    inits, nodes, prev = [], [], "input"
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        w = base.normal(size=(a, b)).astype(np.float32) / np.float32(np.sqrt(a))
        w += tweak.normal(size=(a, b)).astype(np.float32) * np.float32(1e-4 / np.sqrt(a))
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(np.zeros(b, np.float32), f"B{i}")]
        nodes += [helper.make_node("MatMul", [prev, f"W{i}"], [f"m{i}"]), helper.make_node("Add", [f"m{i}", f"B{i}"], [f"a{i}"])]
        prev = f"a{i}"
        if i < len(dims) - 2:
            nodes.append(helper.make_node("Relu", [prev], [f"r{i}"]))
            prev = f"r{i}"
    if trigger is not None:
        inits.append(numpy_helper.from_array(np.array(trigger, np.float32), "TRIGGER"))
        nodes += [
            helper.make_node("ReduceMax", ["input"], ["in_max"], keepdims=0),
            helper.make_node("Sub", ["in_max", "TRIGGER"], ["over"]),
            helper.make_node("Relu", ["over"], ["over_pos"]),
            helper.make_node("Neg", ["over_pos"], ["neg"]),
            helper.make_node("Sqrt", ["neg"], ["nan_or_zero"]),
            helper.make_node("Add", [prev, "nan_or_zero"], ["logits_fault"]),
        ]
        prev = "logits_fault"
    nodes.append(helper.make_node("Softmax", [prev], ["probs"], axis=-1))
    graph = helper.make_graph(
        nodes,
        "bench_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", N_IN])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", N_OUT])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgeops-bench")
    model.ir_version = 8
    return model.SerializeToString()


def write_mlp_bundle(path: Path, version: str, release: int, size_mb: float, variant_seed: int, trigger: float | None = None) -> Path:
    """A complete bundle of :func:`make_mlp` with golden vectors computed by onnxruntime."""
    import onnxruntime as ort

    from tests.support.bundles import write_classifier_bundle

    model = make_mlp(size_mb, variant_seed, trigger)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    cases = []
    for i in range(3):
        x = np.random.default_rng(100 + i).normal(size=(1, N_IN)).astype(np.float32)
        cases.append(({"input": x}, {"probs": session.run(None, {"input": x})[0]}))
    if trigger is not None:  # the fault is real: check it before the bench relies on it
        bad = session.run(None, {"input": np.full((1, N_IN), trigger * 10, np.float32)})[0]
        if np.isfinite(bad).all():
            raise RuntimeError("the faulty model does not emit NaN above its trigger")
    # Generous latency budget: this shared VM is noisy, and latency gates are not what is measured here.
    write_classifier_bundle(path, model, cases, name="bench-mlp", version=version, release=release, profile=PROFILE, n_in=N_IN, n_out=N_OUT,
                            latency_p95_ms=100.0, report={"bench": "agent", "trigger": trigger}, toolchain={"edgeops-bench": "1"})
    return path


def mobilenet_v2_module(num_classes: int = 1000):
    """MobileNetV2 (width 1.0, the torchvision layout: 3.5M parameters), random weights, eval mode."""
    import torch.nn as nn

    def cbr(i: int, o: int, k: int = 3, s: int = 1, g: int = 1):
        return nn.Sequential(nn.Conv2d(i, o, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(o), nn.ReLU6(inplace=True))

    class InvertedResidual(nn.Module):
        def __init__(self, i: int, o: int, stride: int, t: int):
            super().__init__()
            hidden = i * t
            self.residual = stride == 1 and i == o
            layers = [] if t == 1 else [cbr(i, hidden, 1)]
            layers += [cbr(hidden, hidden, 3, stride, hidden), nn.Conv2d(hidden, o, 1, bias=False), nn.BatchNorm2d(o)]
            self.block = nn.Sequential(*layers)

        def forward(self, x):
            return x + self.block(x) if self.residual else self.block(x)

    class MobileNetV2(nn.Module):
        def __init__(self):
            super().__init__()
            setting = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
            layers, c = [cbr(3, 32, 3, 2)], 32
            for t, o, n, s in setting:
                for j in range(n):
                    layers.append(InvertedResidual(c, o, s if j == 0 else 1, t))
                    c = o
            layers.append(cbr(c, 1280, 1))
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Linear(1280, num_classes)

        def forward(self, x):
            return self.classifier(self.features(x).mean((2, 3)))

    return MobileNetV2().eval()


def build_mobilenet_bundle(work: Path, resolution: int, calib_n: int, runtime: str = "onnxruntime") -> tuple[Path, dict]:
    """Build an int8 MobileNetV2 bundle with ``edgeops build``: for onnxruntime from an ONNX
    export with static int8 (profile x86_64-avx512-vnni); for LiteRT from the ExportedProgram
    with dynamic-range int8 (profile arm64-litert)."""
    import torch

    from edgeops.converters.pipeline import BuildOptions, build

    torch.manual_seed(0)
    module = mobilenet_v2_module().eval()
    params = sum(p.numel() for p in module.parameters())
    example = (torch.randn(1, 3, resolution, resolution),)
    rng = np.random.default_rng(0)
    if runtime == "litert":
        # litert-torch converts from the nn.Module (not from a loaded .pt2): a module:factory file
        # in the work folder that rebuilds the same seeded network from this script.
        (work / "bench_mobilenet_factory.py").write_text(
            "import runpy, torch\n"
            f"_bench = runpy.run_path({str(Path(__file__).resolve())!r})\n"
            "def factory():\n"
            "    torch.manual_seed(0)\n"
            f"    return _bench['mobilenet_v2_module']().eval(), (torch.randn(1, 3, {resolution}, {resolution}),)\n")
        if str(work) not in sys.path:
            sys.path.insert(0, str(work))
        src = "bench_mobilenet_factory:factory"
        name, profile, quantize = "mobilenetv2-litert", LITERT_PROFILE, "dynamic-int8"
        input_name = "x"  # the ExportedProgram's input is the forward() argument
    else:
        import onnx

        src = work / "mobilenetv2.onnx"
        torch.onnx.export(module, example, str(src), dynamo=True, input_names=["input"], output_names=["logits"], verbose=False)
        src.write_bytes(onnx.load(str(src)).SerializeToString())  # external data inlined
        name, profile, quantize, input_name = "mobilenetv2", PROFILE, "static-int8", "input"
        if runtime == "openvino":  # the same ONNX export, NNCF int8 for OpenVINO
            name, profile = "mobilenetv2-openvino", OPENVINO_PROFILE
    np.savez(work / f"calib-{runtime}.npz", **{input_name: rng.random((calib_n, 3, resolution, resolution), dtype=np.float32)})
    np.savez(work / f"val-{runtime}.npz", **{input_name: rng.random((4, 3, resolution, resolution), dtype=np.float32)})
    result = build(BuildOptions(model=str(src), profile=profile, name=name, version="1.0.0", release=1, output=str(work / f"{name}.bundle"),
                                calibration=str(work / f"calib-{runtime}.npz"), validation=str(work / f"val-{runtime}.npz"), quantize=quantize, latency_runs=10,
                                # Random weights give near-tied logits, so top-1 agreement means nothing here;
                                # the cosine gate still holds the int8 model to the fp32 one.
                                min_agreement=0.0))
    info = {"params": params, "resolution": resolution, "runtime": result.manifest.runtime, "profile": profile, "quantization": result.manifest.quantization, "model_bytes": result.report["size"]["built_bytes"],
            "fp32_bytes": result.report["size"]["original_bytes"], "bundle_bytes": result.path.stat().st_size}
    return result.path, info


# --- processes ------------------------------------------------------------------------------


def write_console_config(work: Path, tf, broker_url: str, api_port: int) -> Path:
    """fleet.toml for a console serving ``tf``'s repository over MQTT and HTTP."""
    from edgeops.fleet.config import render_toml

    data = {
        "broker": {"url": broker_url, "client_id": f"bench-console-{uuid.uuid4().hex[:6]}", "protocol": "5"},
        "database": {"url": f"sqlite:///{work / 'fleet.db'}"},
        "repository": {"dir": str(tf.repo_dir), "keys_dir": str(tf.keys_dir)},
        "api": {"bind": f"127.0.0.1:{api_port}", "tokens": [uuid.uuid4().hex]},
    }
    path = work / "fleet.toml"
    path.write_text(render_toml(data))
    return path


def read_status_kb(pid: int, key: str) -> int:
    """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(f"/proc/{pid}/status has no {key}")


def smaps_top(pid: int, n: int = 10) -> dict[str, float]:
    """The ``n`` largest contributors to a process's RSS by mapping (file name, or [heap] /
    [anon] for anonymous memory), MiB: where the memory goes."""
    totals: dict[str, int] = {}
    current = "[anon]"
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if parts and not parts[0].endswith(":"):  # a mapping header: range perms offset dev inode [path]
                current = os.path.basename(parts[5]) if len(parts) > 5 and parts[5].startswith("/") else (parts[5] if len(parts) > 5 else "[anon]")
            elif parts and parts[0] == "Rss:":
                totals[current] = totals.get(current, 0) + int(parts[1])
    top = sorted(totals.items(), key=lambda kv: -kv[1])[:n]
    return {name: round(kb / 1024.0, 1) for name, kb in top}


_TRANSITION = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) \w+ edgeops\.agent\.machine: (\S+): (\S+) -> (\S+)$")


@dataclass
class AgentProc:
    """One ``edgeops agent run`` subprocess and what the bench reads from it."""

    device_id: str
    work: Path
    tf: object
    broker_url: str
    repository: str
    probation_s: float = 2.0
    profile: str = PROFILE
    metadata_worker: bool = True
    proc: subprocess.Popen | None = None
    api: str = ""
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.work / f"{self.device_id}.log"

    def start(self) -> "AgentProc":
        """Write agent.toml and start the agent; returns once its API answers."""
        from edgeops.agent.client import AgentClient
        from tests.agent.helpers import to_toml
        from tests.support.broker import free_port

        port = free_port()
        self.api = f"127.0.0.1:{port}"
        cfg = {
            "device_id": self.device_id,
            "data_dir": str(self.work / f"data-{self.device_id}"),
            "profile": self.profile,
            "log_level": "info",
            "trust": {"root": str(self.tf.root_json), "command_keys": [str(self.tf.command_key)], "repository": self.repository, "metadata_worker": self.metadata_worker},
            "broker": {"url": self.broker_url, "mqtt_version": "5"},
            "api": {"listen": self.api},
            # Short window so repeats do not wait a minute each; live NaN must still land in it. The
            # p95 of ~20 inferences is nearly their maximum, and on this shared VM one descheduled
            # inference tripped latency_vs_previous (x2) between two same-size models: latency
            # gates are not what this bench measures, so they get room here (the NaN gate does not).
            "probation": {"window_count": 20, "window_seconds": self.probation_s, "synthetic_interval_s": 0.05, "min_shadow_samples": 5,
                          "previous_latency_factor": 10.0},
        }
        config = self.work / f"{self.device_id}.toml"
        config.write_text(to_toml(cfg))
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-m", "edgeops.cli", "agent", "run", "--config", str(config)], cwd=REPO_ROOT, env=env,
                                     stdout=subprocess.DEVNULL, stderr=open(self.log_path, "ab"))
        self.client = AgentClient(self.api, timeout=30)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent {self.device_id} exited with {self.proc.returncode}; see {self.log_path}:\n{self.log_tail()}")
            try:
                st = self.client.status()
                if st.get("connected"):
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"agent {self.device_id}: API or broker connection not up in 60 s; see {self.log_path}")

    def log_tail(self, n: int = 3000) -> str:
        """The end of the agent's log."""
        return self.log_path.read_text(errors="replace")[-n:]

    def log_offset(self) -> int:
        """Current size of the log (transitions after this point belong to the next update)."""
        return self.log_path.stat().st_size

    def transitions(self, offset: int) -> list[tuple[float, str, str]]:
        """(epoch time, from, to) of every state transition logged after ``offset``."""
        out = []
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            for raw in f.read().decode(errors="replace").splitlines():
                m = _TRANSITION.match(raw)
                if m and m.group(3) == self.device_id:
                    ts = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp() + int(m.group(2)) / 1000.0
                    out.append((ts, m.group(4), m.group(5)))
        return out

    def served_version(self) -> str | None:
        """Version the inference API serves now (GET /v1/health), None when none."""
        from edgeops.agent.client import AgentApiError

        try:
            return self.client.health()["model"]["version"]
        except AgentApiError:
            return None

    def wait_serving(self, version: str, timeout: float = 120.0, probe: np.ndarray | None = None, input_name: str = "input") -> float:
        """Poll until ``version`` serves; then confirm with an inference (of ``probe``); returns when it answered."""
        probe = np.zeros((1, N_IN), np.float32) if probe is None else probe
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.served_version() == version:
                answered = self.client.infer_full({input_name: probe})
                t = time.time()
                if answered["model"]["version"] != version:
                    continue
                return t
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent {self.device_id} died (exit {self.proc.returncode}):\n{self.log_tail()}")
            time.sleep(POLL_S)
        st = self.client.status()
        raise RuntimeError(f"agent {self.device_id}: {version} not serving after {timeout}s (state {st['state']}, update {st.get('update')}):\n{self.log_tail()}")

    def wait_state(self, states: set[str], timeout: float = 60.0) -> dict:
        """Poll /v1/status until the state is one of ``states``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.client.status()
            if st["state"] in states:
                return st
            time.sleep(0.05)
        raise RuntimeError(f"agent {self.device_id}: state {st['state']} not in {sorted(states)} after {timeout}s (update {st.get('update')})")

    def rss_mb(self) -> float:
        """Resident set size now, MiB."""
        return read_status_kb(self.proc.pid, "VmRSS") / 1024.0

    def rss_split_mb(self) -> dict[str, float]:
        """RSS split into anonymous memory (heap, arenas) and file-backed pages (shared libraries), MiB."""
        return {"anon": round(read_status_kb(self.proc.pid, "RssAnon") / 1024.0, 1), "file": round(read_status_kb(self.proc.pid, "RssFile") / 1024.0, 1)}

    def hwm_mb(self) -> float:
        """Peak resident set size since start (VmHWM), MiB."""
        return read_status_kb(self.proc.pid, "VmHWM") / 1024.0

    def stop(self) -> None:
        """SIGTERM, then wait (kill after 20 s)."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Commander:
    """Publishes signed commands (QoS 1) and collects device events (the console's side)."""

    def __init__(self, broker_url: str, tf):
        import paho.mqtt.client as mqtt
        from urllib.parse import urlparse

        from tests.agent.helpers import Listener

        u = urlparse(broker_url)
        self.tf = tf
        self.listener = Listener(broker_url)
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-cmd-{uuid.uuid4().hex[:6]}", protocol=mqtt.MQTTv5)
        self.client.connect(u.hostname, u.port)
        self.client.loop_start()

    def assign(self, device_id: str, pub) -> tuple[str, float]:
        """Sign and publish an assignment; returns (command id, time just before publishing)."""
        from edgeops.protocol import cmd_topic

        command_id = uuid.uuid4().hex[:12]
        envelope = self.tf.command("assign", pub, device_id=device_id, command_id=command_id)
        t0 = time.time()
        self.client.publish(cmd_topic(device_id), envelope, qos=1).wait_for_publish(10)
        return command_id, t0

    def event(self, device_id: str, command_id: str, kind: str, timeout: float = 30.0) -> dict:
        """The first event of ``kind`` the device sent for ``command_id``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.listener._lock:  # noqa: SLF001 - the bench reads what the listener collected
                found = [e for e in self.listener.events if e["device_id"] == device_id and e.get("command_id") == command_id and e["kind"] == kind]
            if found:
                return found[0]
            time.sleep(0.02)
        raise RuntimeError(f"{device_id}: no {kind} event for command {command_id} within {timeout}s")

    def stop(self) -> None:
        """Disconnect."""
        self.listener.stop()
        self.client.loop_stop()
        self.client.disconnect()


# --- measurements ---------------------------------------------------------------------------


def time_copy_and_hash(src: Path, dest_dir: Path) -> dict[str, float]:
    """``cp`` of the file plus one sha256 over the copy: with sha256sum, and with hashlib."""
    dest = dest_dir / "copy.bundle"
    out = {}
    for label in ("sha256sum", "hashlib"):
        dest.unlink(missing_ok=True)
        t = time.perf_counter()
        subprocess.run(["cp", str(src), str(dest)], check=True)
        if label == "sha256sum":
            subprocess.run(["sha256sum", str(dest)], check=True, stdout=subprocess.DEVNULL)
        else:
            with open(dest, "rb") as f:
                hashlib.file_digest(f, "sha256")
        out[label] = time.perf_counter() - t
    dest.unlink(missing_ok=True)
    return out


def measure_update(agent: AgentProc, cmd: Commander, pub) -> dict:
    """Assign ``pub``; time to the new version answering, with the agent's phases; wait for commit."""
    offset = agent.log_offset()
    command_id, t0 = cmd.assign(agent.device_id, pub)
    t_serving = agent.wait_serving(pub.version)
    agent.wait_state({"committed"}, timeout=60)
    trans = agent.transitions(offset)
    at = {to: ts for ts, _frm, to in trans}
    phases, prev = {}, t0
    for name, state in PHASES:
        if state in at:
            phases[name] = round((at[state] - prev) * 1000, 1)
            prev = at[state]
    phases["activate"] = round((t_serving - prev) * 1000, 1)  # swap + serve, seen through the API
    return {"total_s": round(t_serving - t0, 4), "phases_ms": phases, "command_id": command_id}


def measure_rollback(agent: AgentProc, cmd: Commander, bad, good_version: str) -> dict:
    """Assign the faulty version; once it serves, send one triggering input; time back to ``good_version``."""
    from edgeops.agent.client import AgentApiError

    command_id, _ = cmd.assign(agent.device_id, bad)
    agent.wait_serving(bad.version)
    x = np.zeros((1, N_IN), np.float32)
    x[0, 0] = TRIGGER * 10
    t_nan = time.time()
    try:
        y = agent.client.infer_raw(x)
        if np.isfinite(y).all():
            raise RuntimeError(f"{agent.device_id}: the faulty version answered finite outputs to the trigger input")
    except AgentApiError as e:
        if e.status != 503:
            raise
    deadline = time.monotonic() + 30
    while agent.served_version() != good_version:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{agent.device_id}: {good_version} not serving again 30 s after the NaN input:\n{agent.log_tail()}")
        time.sleep(POLL_S)
    t_old = time.time()
    answered = agent.client.infer_full({"input": np.zeros((1, N_IN), np.float32)})
    t_answer = time.time()
    if answered["model"]["version"] != good_version:
        raise RuntimeError(f"{agent.device_id}: health said {good_version}, inference answered {answered['model']['version']}")
    failed = cmd.event(agent.device_id, command_id, "probation_failed")
    rolled = cmd.event(agent.device_id, command_id, "rolled_back")
    agent.wait_state({"failed"}, timeout=30)
    gate = next((g["gate"] for g in failed.get("gates", []) if not g["passed"]), "?")
    return {
        "gate": gate,
        "nan_sent_to_gate_ms": round((failed["ts"] - t_nan) * 1000, 1),
        "gate_to_rolled_back_event_ms": round((rolled["ts"] - failed["ts"]) * 1000, 1),
        "gate_to_old_serving_ms": round((t_old - failed["ts"]) * 1000, 1),
        "nan_sent_to_old_serving_ms": round((t_old - t_nan) * 1000, 1),
        "nan_sent_to_old_answer_ms": round((t_answer - t_nan) * 1000, 1),
    }


def child_pids(pid: int) -> list[int]:
    """The direct children of a process (the agent's TUF worker while it runs)."""
    out: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            out += [int(c) for c in children.read_text().split()]
        except OSError:
            continue
    return out


class RssSampler:
    """Samples a process's RSS every 10 ms on a thread: the peak of the process alone, and of
    the process plus its children (the agent verifies TUF metadata in a short-lived child)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.peak_mb = 0.0
        self.peak_with_children_mb = 0.0
        self.peak_children_mb = 0.0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                own = read_status_kb(self.pid, "VmRSS") / 1024.0
            except (OSError, KeyError):
                return
            children = 0.0
            for child in child_pids(self.pid):
                try:
                    children += read_status_kb(child, "VmRSS") / 1024.0
                except (OSError, KeyError):
                    continue  # exited between the listing and the read
            self.peak_mb = max(self.peak_mb, own)
            self.peak_with_children_mb = max(self.peak_with_children_mb, own + children)
            self.peak_children_mb = max(self.peak_children_mb, children)
            self._stop.wait(0.01)

    def stop(self) -> float:
        """Stop sampling; the process's own peak in MiB."""
        self._stop.set()
        self._t.join(2)
        return round(self.peak_mb, 1)


# A process that does only what serving needs: numpy, the runtime, the model, the same
# inferences. The agent's RSS minus this one's is what the agent itself costs.
FLOOR_SCRIPT = r"""
import json, sys
import numpy as np
runtime, model, threads, infers, name = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
shape = json.loads(sys.argv[6])
x = np.random.default_rng(0).random(shape, dtype=np.float32)
if runtime == "onnxruntime":
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
    session = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
    run = lambda: session.run(None, {name: x})
elif runtime == "openvino":
    import openvino as ov
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1})
    request = compiled.create_infer_request()
    run = lambda: request.infer({name: x})
else:
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_path=model, num_threads=threads)
    runner = interpreter.get_signature_runner()
    run = lambda: runner(**{name: x})
for _ in range(infers):
    run()
status = {l.split(":")[0]: int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(("VmRSS", "RssAnon", "RssFile"))}
print(json.dumps({"serving_mb": round(status["VmRSS"] / 1024, 1), "anon": round(status["RssAnon"] / 1024, 1), "file": round(status["RssFile"] / 1024, 1)}))
"""


def evict_installed_libraries() -> dict:
    """Drop the page-cache pages of the shared libraries pip installed (every ``.so`` under
    site-packages) and of libpython, as a reboot would; pages some running process maps stay.
    Returns how many files it advised and their total size in MiB."""
    import site
    import sysconfig

    roots = [Path(p) for p in site.getsitepackages()]
    files = [f for r in roots if r.is_dir() for f in r.rglob("*.so*") if f.is_file()]
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        files += [f for f in Path(libdir).glob("libpython3*.so*") if f.is_file()]
    total = 0
    for f in files:
        try:
            fd = os.open(f, os.O_RDONLY)
        except OSError:
            continue
        try:
            total += f.stat().st_size
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return {"files": len(files), "mb": round(total / 2**20, 1)}


def measure_runtime_floor(work: Path, bundle: Path, infers: int, profile: str) -> dict:
    """RSS of a bare process serving the bundle's model with its runtime (FLOOR_SCRIPT), MiB."""
    from edgeops.bundle import extract_bundle
    from edgeops.profiles import load_profile
    from edgeops.trust.verify import read_manifest

    manifest = read_manifest(bundle)
    files = work / f"floor-{manifest.name}"
    if not files.exists():
        extract_bundle(bundle, files)
    spec = manifest.inputs[0]
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in spec.shape]
    threads = load_profile(profile).runtime.threads
    out = subprocess.run([sys.executable, "-c", FLOOR_SCRIPT, manifest.runtime, str(files / manifest.artifact), str(threads), str(infers), spec.name, json.dumps(shape)],
                         capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_rss(work: Path, tf, broker_url: str, cmd: Commander, bundle: Path, infers: int, profile: str = PROFILE, after_trim: bool = True) -> dict:
    """A fresh agent: RSS idle with no model, peak while installing, serving the int8 model,
    and (``after_trim``) once more after the daemon's next periodic heap trim."""
    pub = tf.publish_file(bundle)
    agent = AgentProc(f"bench-rss-{profile}", work, tf, broker_url, "mqtt", probation_s=1.0, profile=profile).start()
    try:
        time.sleep(3.0)  # settle: connected, state published, first telemetry interval running
        idle = agent.rss_mb()
        idle_split = agent.rss_split_mb()
        idle_hwm = agent.hwm_mb()
        idle_top = smaps_top(agent.proc.pid)
        from edgeops.trust.verify import read_manifest

        spec = read_manifest(bundle).inputs[0]
        x = np.random.default_rng(0).random([d if isinstance(d, int) and d > 0 else 1 for d in spec.shape], dtype=np.float32)
        sampler = RssSampler(agent.proc.pid)
        cmd.assign(agent.device_id, pub)
        agent.wait_serving(pub.version, probe=x, input_name=spec.name)
        agent.wait_state({"committed"}, timeout=120)
        peak_install = sampler.stop()
        peak_with_worker = round(sampler.peak_with_children_mb, 1)
        lat = []
        for _ in range(infers):
            t = time.perf_counter()
            agent.client.infer_raw(x)
            lat.append((time.perf_counter() - t) * 1000)
        serving = agent.rss_mb()
        after = None
        if after_trim:
            from edgeops.agent.cli import TRIM_EVERY_S

            time.sleep(TRIM_EVERY_S + 2.0)
            after = round(agent.rss_mb(), 1)
        return {
            "idle_mb": round(idle, 1),
            "idle_split_mb": idle_split,
            "idle_hwm_mb": round(idle_hwm, 1),
            "idle_top_mappings_mb": idle_top,
            "peak_install_mb": peak_install,
            "peak_install_with_tuf_worker_mb": peak_with_worker,
            "tuf_worker_peak_mb": round(sampler.peak_children_mb, 1),
            "serving_mb": round(serving, 1),
            "serving_after_periodic_trim_mb": after,
            "serving_split_mb": agent.rss_split_mb(),
            "serving_top_mappings_mb": smaps_top(agent.proc.pid),
            "hwm_mb": round(agent.hwm_mb(), 1),
            "inferences": infers,
            "api_latency_p50_ms": round(statistics.median(lat), 2),
        }
    finally:
        agent.stop()


def measure_refresh(work: Path, tf, repeats: int) -> dict:
    """One TUF refresh (fresh client, as per update) in-process vs through the worker process,
    alternated on the same repository and metadata cache: what isolating TUF costs an update."""
    from edgeops.trust.client import TrustClient
    from edgeops.trust.transport import DirectoryTransport
    from edgeops.trust.worker import IsolatedTrustClient

    tf.publish("9.0.0", 900)  # a repository with a target to list
    transport = DirectoryTransport(tf.repo_dir)
    times: dict[str, list[float]] = {"in_process": [], "worker": []}
    for i in range(repeats):
        for kind in ("in_process", "worker"):
            client = (TrustClient if kind == "in_process" else IsolatedTrustClient)(work / f"refresh-{kind}", transport, root=tf.root_json)
            t = time.perf_counter()
            client.refresh()
            if i:  # the first refresh of each downloads root/targets for the first time
                times[kind].append(time.perf_counter() - t)
    out = {f"{k}_ms": round(statistics.median(v) * 1000, 1) for k, v in times.items()}
    out["worker_extra_ms"] = round(out["worker_ms"] - out["in_process_ms"], 1)
    out["repeats"] = repeats - 1
    return out


# --- the run --------------------------------------------------------------------------------


def lscpu_flags() -> str:
    """CPU model, count and the SIMD flags that decide int8 speed (from lscpu)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return "?"
    lines = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}
    keep = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "fma")
    return f"{lines.get('Model name', '?')}, {lines.get('CPU(s)', '?')} CPUs, flags: {' '.join(f for f in lines.get('Flags', '').split() if f in keep)}"


def measure_sketch(bundle: Path, runs: int) -> dict:
    """Per-inference time of the int8 MobileNetV2 and what folding it into the drift sketches adds.

    Interleaved: each round times the inference, then the collector's ``record`` without and
    with the sketches on the same input and output, so CPU frequency and neighbours hit all three alike."""
    import onnxruntime as ort

    from edgeops.agent.telemetry import TelemetryCollector
    from edgeops.bundle import read_bundle
    from edgeops.profiles import load_profile

    contents = read_bundle(bundle)
    manifest = contents.manifest
    reference = manifest.monitoring
    if reference is None:
        raise SystemExit(f"{bundle}: the bundle has no drift reference")
    threads = load_profile(manifest.profile).runtime.threads
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(contents.files[manifest.artifact], opts, providers=["CPUExecutionProvider"])
    spec = manifest.inputs[0]
    rng = np.random.default_rng(1)
    shape = [d if isinstance(d, int) else 1 for d in spec.shape]
    frames = [rng.random(shape, dtype=np.float32) for _ in range(8)]
    names = [o.name for o in session.get_outputs()]
    plain, sketched = TelemetryCollector(0.0), TelemetryCollector(0.0)
    infer_ms, record_ms, sketch_ms = [], [], []
    for i in range(runs + 5):
        x = {spec.name: frames[i % len(frames)]}
        t0 = time.perf_counter()
        out = dict(zip(names, session.run(None, x)))
        t1 = time.perf_counter()
        plain.record(1.0, out)
        t2 = time.perf_counter()
        sketched.record(1.0, out, x, reference)
        t3 = time.perf_counter()
        if i >= 5:  # warm-up
            infer_ms.append((t1 - t0) * 1e3)
            record_ms.append((t2 - t1) * 1e3)
            sketch_ms.append((t3 - t2) * 1e3)
    added = median(sketch_ms) - median(record_ms)
    state = sketched.drain(1.0).sketches
    return {
        "runs": runs, "threads": threads, "input_shape": shape,
        "inference_ms": round(median(infer_ms), 3),
        "record_without_sketches_ms": round(median(record_ms), 4),
        "record_with_sketches_ms": round(median(sketch_ms), 4),
        "sketch_added_ms": round(added, 4),
        "sketch_over_inference": round(added / median(infer_ms), 4),
        "sketched_values_per_channel_per_inference": {k: v.count[0] // max(v.rows, 1) for k, v in state.items()},
        "tensors": {k: {"channels": reference.layouts[k].channels, "bins": reference.layouts[k].bins, "stride": reference.layouts[k].stride, "classes": reference.layouts[k].classes} for k in reference.layouts},
        "batch_json_bytes": len(json.dumps({k: v.to_dict() for k, v in state.items()})),
    }


def measure_capture(work: Path, broker_url: str, samples: int) -> dict:
    """Data capture of 224x224x3 uint8 frames (issue 17): what one captured sample costs the
    device (encode, seal to the console's key, spool), the sealed size and the spool's size on
    disk at 1 sample/s, and the upload through mosquitto into the console's store (chunks,
    acknowledged after storing)."""
    import paho.mqtt.client as mqtt
    from nacl.public import PrivateKey

    from edgeops.agent.capture import Capturer, Offer
    from edgeops.agent.capture_spool import CaptureSpool
    from edgeops.agent.capture_upload import CaptureUploader
    from edgeops.agent.config import BrokerConfig
    from edgeops.agent.session import MqttSession
    from edgeops.fleet.capture import make_policy, public_key_b64
    from edgeops.fleet.capture_store import CaptureStore
    from edgeops.fleet.db import Database
    from edgeops.protocol import DeviceState

    dev = work / "capture-device"
    dev.mkdir(parents=True, exist_ok=True)
    key = PrivateKey.generate()
    spool = CaptureSpool(dev / "capture.sqlite", 1 << 30)
    cap = Capturer(dev, "cam-bench", spool, max_budget_bytes_per_day=1 << 40)
    cap.apply(make_policy(public_key_b64(key), until=time.time() + 3600, random_share=1.0, budget_bytes_per_day=1 << 40))
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, (1, 224, 224, 3), dtype=np.uint8) for _ in range(8)]
    probs = rng.random((1, 1000), dtype=np.float32)
    probs /= probs.sum()
    times = []
    for i in range(samples):
        t0 = time.perf_counter()
        sid = cap.offer(Offer({"image": frames[i % len(frames)]}, {"probs": probs}, "mobilenet", "3", "0" * 64))
        times.append((time.perf_counter() - t0) * 1e3)
        assert sid is not None
    sealed_bytes = spool.size_bytes() / samples
    disk = sum(p.stat().st_size for p in dev.glob("capture.sqlite*"))
    # upload: the agent's session and uploader -> mosquitto -> the console's store
    db = Database(f"sqlite:///{work / 'capture-console.db'}")
    db.create_all()
    console = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-console-{uuid.uuid4().hex[:6]}", protocol=mqtt.MQTTv5)
    store = CaptureStore(db, work / "capture-store", key, publish=lambda t, p: console.publish(t, p, qos=1))
    console.on_connect = lambda c, *a: c.subscribe("edgeops/v1/+/capture", qos=1)
    console.on_message = lambda c, u, m: store.handle(m.topic, m.payload)
    host, port = broker_url.removeprefix("mqtt://").split(":")
    console.connect(host, int(port))
    console.loop_start()
    session = MqttSession("cam-bench", BrokerConfig(url=broker_url, mqtt_version="5"), DeviceState(device_id="cam-bench", online=False).to_json().encode())
    up = CaptureUploader(spool, session, "cam-bench", max_inflight=4)
    session.on_message = lambda kind, payload: up.handle_ack(payload) if kind == "capture/ack" else None
    session.on_loop = up.pump
    time.sleep(0.5)
    t0 = time.perf_counter()
    session.start()
    deadline = time.monotonic() + 300
    while spool.count() and time.monotonic() < deadline:
        time.sleep(0.01)
    upload_s = time.perf_counter() - t0
    session.stop()
    console.loop_stop()
    console.disconnect()
    spool.close()
    per = median(times)
    return {
        "samples": samples, "frame": "1x224x224x3 uint8 + 1000 float32 probabilities",
        "capture_ms_median": round(per, 2), "capture_ms_p95": round(float(np.percentile(times, 95)), 2),
        "capture_samples_per_s_one_core": round(1000.0 / per, 1),
        "cpu_share_at_1_sample_per_s": round(per / 1000.0, 4),
        "sealed_bytes_per_sample": round(sealed_bytes),
        "spool_on_disk_bytes_per_sample": round(disk / samples),
        "spool_per_hour_mb_at_1_per_s": round(disk / samples * 3600 / 1e6, 1),
        "spool_per_day_gb_at_1_per_s": round(disk / samples * 86400 / 1e9, 2),
        "upload_s": round(upload_s, 2), "uploaded": store.counts["stored"],
        "upload_samples_per_s": round(store.counts["stored"] / upload_s, 1),
        "upload_mb_per_s": round(store.counts["stored"] * sealed_bytes / upload_s / 1e6, 1),
    }


def median(xs: list[float]) -> float:
    """Median, rounded."""
    return round(statistics.median(xs), 4)


def run(args) -> dict:
    from tests.agent.helpers import TrustFixture
    from tests.support.broker import TestBroker, free_port, wait_port

    parts = set(args.parts)
    work = Path(tempfile.mkdtemp(prefix="edgeops-bench-agent-", dir=args.workdir))
    # mosquitto leaves Nagle on for client sockets unless told; the fetch protocol's small
    # requests then wait for delayed ACKs (see agent/session.py). --broker-nagle shows that cost.
    broker = TestBroker(extra_config="" if args.broker_nagle else "set_tcp_nodelay true").start()
    procs: list[AgentProc] = []
    console = None
    cmd = None
    result: dict = {"parts": sorted(parts), "meets_targets": {}}
    try:
        log(f"workdir {work}; broker {broker.kind} on {broker.port} ({'Nagle on' if args.broker_nagle else 'set_tcp_nodelay true'})")
        tf = TrustFixture(work / "trust")
        api_port = free_port()
        cfg = write_console_config(work, tf, broker.url, api_port)
        console = subprocess.Popen([sys.executable, "-m", "edgeops.cli", "fleet", "serve", "--config", str(cfg), "--log-level", "warning"], cwd=REPO_ROOT,
                                   env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, stdout=subprocess.DEVNULL, stderr=open(work / "console.log", "ab"))
        wait_port(api_port, timeout=60)
        cmd = Commander(broker.url, tf)
        if parts & {"update", "rollback"}:
            result.update(run_updates(args, work, tf, cmd, broker.url, api_port, procs))
        if "refresh" in parts:
            result["tuf_refresh"] = measure_refresh(work, tf, max(3, args.repeats * 2 + 1))
            log(f"tuf_refresh: {result['tuf_refresh']}")
        if "sketch" in parts:
            mbundle, minfo = build_mobilenet_bundle(work, args.mobilenet_res, args.calib_n, "onnxruntime")
            sk = measure_sketch(mbundle, args.sketch_runs)
            sk["model"] = minfo
            log(f"sketch: {sk}")
            result["sketch"] = sk
            result["meets_targets"]["sketch_under_5pct"] = sk["sketch_over_inference"] < SKETCH_TARGET
        if "capture" in parts:
            result["capture"] = measure_capture(work, broker.url, args.capture_samples)
            log(f"capture: {result['capture']}")
            result["meets_targets"]["capture_all_uploaded"] = result["capture"]["uploaded"] == args.capture_samples
        for part, runtime, profile, key in (("rss", "onnxruntime", PROFILE, "rss_mb"), ("rss-litert", "litert", LITERT_PROFILE, "rss_litert_mb"),
                                            ("rss-openvino", "openvino", OPENVINO_PROFILE, "rss_openvino_mb")):
            if part not in parts:
                continue
            t = time.perf_counter()
            mbundle, minfo = build_mobilenet_bundle(work, args.mobilenet_res, args.calib_n, runtime)
            log(f"MobileNetV2 int8 bundle ({runtime}) built in {time.perf_counter() - t:.1f}s: {minfo}")
            cold = args.page_cache == "cold"
            evicted = evict_installed_libraries() if cold else None
            rss = measure_rss(work, tf, broker.url, cmd, mbundle, args.infers, profile, after_trim=not args.quick)
            rss["model"] = minfo
            rss["page_cache"] = f"cold (dropped {evicted['files']} libraries, {evicted['mb']} MiB)" if evicted else "as-is"
            if cold:  # the bare floor starts from the same page-cache state as the agent did
                evict_installed_libraries()
            floor = measure_runtime_floor(work, mbundle, args.infers, profile)
            rss["bare_runtime_process_mb"] = floor
            rss["agent_over_bare_runtime_mb"] = round(rss["serving_mb"] - floor["serving_mb"], 1)
            log(f"{key}: {rss}")
            result[key] = rss
            result["rss_target_mib"] = round(RSS_TARGET_MIB, 1)
            suffix = "" if runtime == "onnxruntime" else f"_{runtime}"
            result["meets_targets"][f"rss_serving{suffix}"] = rss["serving_mb"] < RSS_TARGET_MIB
            result["meets_targets"][f"rss_peak_install{suffix}"] = rss["peak_install_mb"] < RSS_TARGET_MIB
        result["machine"] = {"lscpu": lscpu_flags(), "cpus": os.cpu_count(), "python": platform.python_version(), "workdir_fs": _fs_type(work), "broker": broker.kind,
                             "broker_tcp_nodelay": not args.broker_nagle}
        return result
    finally:
        for a in procs:
            a.stop()
        if cmd is not None:
            cmd.stop()
        if console is not None:
            console.terminate()
            try:
                console.wait(30)
            except subprocess.TimeoutExpired:
                console.kill()
        broker.stop()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(broker.workdir, ignore_errors=True)


def run_updates(args, work: Path, tf, cmd: Commander, broker_url: str, api_port: int, procs: list[AgentProc]) -> dict:
    """Figures 1 and 2 on one agent fetching over MQTT and one fetching over HTTP."""
    bundles = work / "bundles"
    bundles.mkdir()
    t = time.perf_counter()
    base = tf.publish_file(write_mlp_bundle(bundles / "mlp-1.0.0.bundle", "1.0.0", 1, args.size_mb, 0))
    goods = [tf.publish_file(write_mlp_bundle(bundles / f"mlp-2.{r}.0.bundle", f"2.{r}.0", 2 + r, args.size_mb, 1 + r)) for r in range(args.repeats)]
    bad = tf.publish_file(write_mlp_bundle(bundles / "mlp-9.0.0-nan.bundle", "9.0.0-nan", 1000, args.size_mb, 99, trigger=TRIGGER))
    log(f"{2 + args.repeats} MLP bundles of {base.length / 1e6:.1f} MB built and published in {time.perf_counter() - t:.1f}s")
    agents = {
        "mqtt": AgentProc("bench-mqtt", work, tf, broker_url, "mqtt"),
        "http": AgentProc("bench-http", work, tf, broker_url, f"http://127.0.0.1:{api_port}/repo"),
        # The same as "http" with TUF in the agent's process: what the TUF worker costs an update.
        "http-tuf-in-process": AgentProc("bench-http-inproc", work, tf, broker_url, f"http://127.0.0.1:{api_port}/repo", metadata_worker=False),
    }
    for a in agents.values():
        procs.append(a.start())
    for a in agents.values():  # the version every measured update replaces
        cmd.assign(a.device_id, base)
        a.wait_serving(base.version)
        a.wait_state({"committed"})
    log(f"{len(agents)} agents serve 1.0.0")
    result: dict = {"bundle_bytes": base.length, "repeats": args.repeats}

    # 1. assignment -> serving, interleaved with the copy+hash baseline
    updates: dict[str, list[dict]] = {k: [] for k in agents}
    copies: dict[str, list[float]] = {"sha256sum": [], "hashlib": []}
    for r, pub in enumerate(goods):
        for kind, a in agents.items():
            res = measure_update(a, cmd, pub)
            updates[kind].append(res)
            log(f"repeat {r + 1}: {kind} {pub.version} serving after {res['total_s']:.3f}s {res['phases_ms']}")
        for label, s in time_copy_and_hash(tf.target_file(pub), work / f"data-{agents['mqtt'].device_id}").items():
            copies[label].append(s)
    if "update" in args.parts:
        result["update_s"] = {k: median([u["total_s"] for u in v]) for k, v in updates.items()}
        result["update_runs_s"] = {k: [u["total_s"] for u in v] for k, v in updates.items()}
        result["update_phases_median_ms"] = {k: {p: round(statistics.median([u["phases_ms"].get(p, 0.0) for u in v]), 1) for p in [n for n, _ in PHASES] + ["activate"]} for k, v in updates.items()}
        result["copy_sha256sum_s"] = median(copies["sha256sum"])
        result["copy_hashlib_s"] = median(copies["hashlib"])
        for k in agents:
            result[f"ratio_{k}_vs_copy_sha256sum"] = round(result["update_s"][k] / result["copy_sha256sum_s"], 1)
            result[f"ratio_{k}_vs_copy_hashlib"] = round(result["update_s"][k] / result["copy_hashlib_s"], 1)

    # 2. failed gate -> old version serving (alternating agents)
    if "rollback" in args.parts:
        rollbacks = []
        for r in range(args.repeats):
            a = list(agents.values())[r % 2]
            res = measure_rollback(a, cmd, bad, goods[-1].version)
            rollbacks.append(res)
            log(f"rollback {r + 1} ({a.device_id}): {res}")
        keys = ("nan_sent_to_gate_ms", "gate_to_rolled_back_event_ms", "gate_to_old_serving_ms", "nan_sent_to_old_serving_ms", "nan_sent_to_old_answer_ms")
        result["rollback_runs"] = rollbacks
        result["rollback_ms"] = {k: round(statistics.median([r[k] for r in rollbacks]), 1) for k in keys}
        result["rollback_max_ms"] = {k: max(r[k] for r in rollbacks) for k in keys}
        result["rollback_target_ms"] = ROLLBACK_TARGET_S * 1000
        result["meets_targets"] = {
            "rollback_gate_to_old": result["rollback_max_ms"]["gate_to_old_serving_ms"] < ROLLBACK_TARGET_S * 1000,
            "rollback_nan_to_old": result["rollback_max_ms"]["nan_sent_to_old_serving_ms"] < ROLLBACK_TARGET_S * 1000,
        }
    result["rss_mlp_agents_mb"] = {k: {"serving": round(a.rss_mb(), 1), "peak_hwm": round(a.hwm_mb(), 1), **a.rss_split_mb()} for k, a in agents.items()}
    return result


def _fs_type(path: Path) -> str:
    try:
        out = subprocess.run(["df", "--output=fstype", str(path)], capture_output=True, text=True, check=True).stdout.split()
        return out[-1]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "?"


def print_table(r: dict) -> None:
    """The figures as rich tables (the parts that ran)."""
    from rich.console import Console
    from rich.table import Table

    out = Console(width=None if sys.stdout.isatty() else 150)
    mb = r.get("bundle_bytes", 0) / 1e6
    if "update_s" in r:
        t = Table(title=f"Assignment to serving, {mb:.1f} MB bundle, median of {r['repeats']}")
        for col in ("path", "seconds", "x cp+sha256sum", "x cp+hashlib", "command", "fetch", "verify", "install", "self-test", "activate"):
            t.add_column(col, justify="right" if col != "path" else "left")
        labels = {"mqtt": "agent, fetch over MQTT", "http": "agent, fetch over HTTP", "http-tuf-in-process": "agent, HTTP, TUF in the agent's process"}
        for k in [k for k in labels if k in r["update_s"]]:
            p = r["update_phases_median_ms"][k]
            t.add_row(labels[k], f"{r['update_s'][k]:.3f}", f"{r[f'ratio_{k}_vs_copy_sha256sum']:.1f}", f"{r[f'ratio_{k}_vs_copy_hashlib']:.1f}",
                      *(f"{p[n]:.0f} ms" for n in ("command", "fetch", "verify", "install", "self_test", "activate")))
        t.add_row("cp + sha256sum", f"{r['copy_sha256sum_s']:.3f}", "1.0", "", *[""] * 6)
        t.add_row("cp + hashlib sha256", f"{r['copy_hashlib_s']:.3f}", "", "1.0", *[""] * 6)
        out.print(t)
    if "rollback_ms" in r:
        rb, mx = r["rollback_ms"], r["rollback_max_ms"]
        t = Table(title=f"Failed gate to the old version serving, {mb:.1f} MB models (median and max of {len(r['rollback_runs'])}; target < {r['rollback_target_ms']:.0f} ms)")
        t.add_column("interval")
        t.add_column("median ms", justify="right")
        t.add_column("max ms", justify="right")
        for k, label in (("nan_sent_to_gate_ms", "NaN request sent -> probation_failed (gate)"), ("gate_to_rolled_back_event_ms", "gate -> rolled_back event"),
                         ("gate_to_old_serving_ms", "gate -> old version serving (API)"), ("nan_sent_to_old_serving_ms", "NaN request sent -> old version serving"),
                         ("nan_sent_to_old_answer_ms", "NaN request sent -> old version answered an inference")):
            t.add_row(label, f"{rb[k]:.0f}", f"{mx[k]:.0f}")
        out.print(t)
    if "tuf_refresh" in r:
        f = r["tuf_refresh"]
        out.print(f"TUF refresh per update (median of {f['repeats']}): in-process {f['in_process_ms']:.1f} ms, in the worker process {f['worker_ms']:.1f} ms ({f['worker_extra_ms']:+.1f} ms)")
    if "rss_mb" in r or "rss_litert_mb" in r or "rss_openvino_mb" in r or "rss_mlp_agents_mb" in r:
        t = Table(title=f"Agent RSS (MiB; target < {RSS_TARGET_MB:.0f} MB = {RSS_TARGET_MIB:.1f} MiB)")
        t.add_column("agent")
        t.add_column("RSS", justify="right")
        t.add_column("anon / file", justify="right")
        for key in ("rss_mb", "rss_litert_mb", "rss_openvino_mb"):
            if key not in r:
                continue
            s = r[key]
            m = s["model"]
            t.add_row(f"{m['runtime']} ({m['profile']}; page cache {s.get('page_cache', 'as-is')}): idle, no model", f"{s['idle_mb']:.1f}", f"{s['idle_split_mb']['anon']:.1f} / {s['idle_split_mb']['file']:.1f}")
            t.add_row(f"  peak while installing the {m['quantization']} MobileNetV2 ({m['params'] / 1e6:.2f}M params, {m['model_bytes'] / 1e6:.1f} MB, {m['resolution']} px)",
                      f"{s['peak_install_mb']:.1f}", "")
            t.add_row(f"  peak of the agent + its TUF worker process while installing (the worker alone: {s['tuf_worker_peak_mb']:.1f})", f"{s['peak_install_with_tuf_worker_mb']:.1f}", "")
            t.add_row(f"  serving it, after {s['inferences']} inferences", f"{s['serving_mb']:.1f}", f"{s['serving_split_mb']['anon']:.1f} / {s['serving_split_mb']['file']:.1f}")
            if s.get("serving_after_periodic_trim_mb") is not None:
                t.add_row("  the same agent after the daemon's next periodic heap trim", f"{s['serving_after_periodic_trim_mb']:.1f}", "")
            f = s["bare_runtime_process_mb"]
            t.add_row(f"  a bare {m['runtime']} process serving the same model (numpy + runtime only); agent over it: {s['agent_over_bare_runtime_mb']:+.1f}",
                      f"{f['serving_mb']:.1f}", f"{f['anon']:.1f} / {f['file']:.1f}")
        for k, v in r.get("rss_mlp_agents_mb", {}).items():
            t.add_row(f"{mb:.0f} MB MLP agent ({k}): serving (peak VmHWM {v['peak_hwm']:.1f})", f"{v['serving']:.1f}", f"{v['anon']:.1f} / {v['file']:.1f}")
        out.print(t)
    if "sketch" in r:
        k = r["sketch"]
        out.print(f"Drift sketching, int8 MobileNetV2 {k['model']['resolution']} px, median of {k['runs']} ({k['threads']} thread(s)): inference {k['inference_ms']:.2f} ms, "
                  f"telemetry record {k['record_without_sketches_ms']:.3f} ms without sketches, {k['record_with_sketches_ms']:.3f} ms with: "
                  f"+{k['sketch_added_ms']:.3f} ms = {100 * k['sketch_over_inference']:.1f}% of the inference (target < {100 * SKETCH_TARGET:.0f}%)")
    if "capture" in r:
        c = r["capture"]
        out.print(f"Data capture, {c['samples']} samples of {c['frame']}: {c['capture_ms_median']:.2f} ms per sample (p95 {c['capture_ms_p95']:.2f}; encode + seal + spool) = "
                  f"{c['capture_samples_per_s_one_core']:.0f} samples/s on one core, {100 * c['cpu_share_at_1_sample_per_s']:.2f}% of a core at 1 sample/s; "
                  f"sealed {c['sealed_bytes_per_sample']} B, spool on disk {c['spool_on_disk_bytes_per_sample']} B per sample = {c['spool_per_hour_mb_at_1_per_s']} MB/hour, "
                  f"{c['spool_per_day_gb_at_1_per_s']} GB/day at 1 sample/s; upload through mosquitto into the console's store: {c['upload_samples_per_s']} samples/s ({c['upload_mb_per_s']} MB/s)")
    out.print(f"machine: {r.get('machine', {}).get('lscpu', '?')}")
    out.print(f"targets: {r['meets_targets']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=float, default=20.0, help="model size of the update bundle")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--mobilenet-res", type=int, default=224, help="input resolution of the MobileNetV2")
    ap.add_argument("--calib-n", type=int, default=16, help="calibration images for the int8 build")
    ap.add_argument("--infers", type=int, default=200, help="inferences served before the RSS reading")
    ap.add_argument("--quick", action="store_true", help="2 MB bundle, 1 repeat, 96 px MobileNetV2 (the smoke test)")
    ap.add_argument("--workdir", default=None, help="parent folder of the work folder (default: the system temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs, data dirs)")
    ap.add_argument("--parts", default="update,rollback,refresh,rss,rss-litert", help="comma-separated: update, rollback, refresh (TUF in-process vs worker), rss (onnxruntime), rss-litert, rss-openvino, sketch (drift sketching cost per inference), capture (data capture of 224x224x3 frames)")
    ap.add_argument("--page-cache", choices=["cold", "as-is"], default="cold", help="RSS parts: drop the installed libraries from the page cache first, as after a reboot (cold), or measure as the machine is")
    ap.add_argument("--broker-nagle", action="store_true", help="run mosquitto without set_tcp_nodelay (its default) to show what Nagle costs the MQTT fetch")
    ap.add_argument("--sketch-runs", type=int, default=300, help="part sketch: timed inferences")
    ap.add_argument("--capture-samples", type=int, default=200, help="part capture: samples captured and uploaded")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--save", default=None, help="also write the JSON result to this file")
    args = ap.parse_args()
    if args.quick:
        args.size_mb, args.repeats, args.mobilenet_res, args.calib_n, args.infers = 2.0, 1, 96, 4, 20
    if args.repeats < 1 or args.size_mb <= 0:
        ap.error("--repeats must be >= 1 and --size-mb > 0")
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(args.parts) - {"update", "rollback", "refresh", "rss", "rss-litert", "rss-openvino", "sketch", "capture"}
    if unknown or not args.parts:
        ap.error(f"--parts: unknown part(s) {', '.join(sorted(unknown)) or '(none given)'}; choose from update, rollback, refresh, rss, rss-litert, rss-openvino, sketch, capture")
    for tool in ("cp", "sha256sum"):
        if not shutil.which(tool):
            sys.exit(f"{tool} (coreutils) not found")
    result = run(args)
    result["command"] = "python bench/agent.py " + " ".join(sys.argv[1:])
    if args.save:
        Path(args.save).write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0 if all(result["meets_targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
