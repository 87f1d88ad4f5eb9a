"""edgeops.agent.memory: one malloc arena for the daemon's threads, model-sized buffers back to
the OS when freed, free heap pages trimmed at rest (glibc).

Each case runs in a fresh interpreter: malloc settings are per process and the test must see
glibc's own dynamic threshold, not one this pytest process already moved.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

SCRIPT = """
import json, sys
import numpy as np
from edgeops.agent.memory import release_large_frees

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024

pinned = release_large_frees() if sys.argv[1] == "pin" else None
big = np.ones(24 << 20, np.uint8)  # a model-sized buffer, mmapped, then freed: glibc raises its threshold
del big
before = rss()
weights = [np.ones(6 << 20, np.uint8) for _ in range(4)]  # the next version's buffers
del weights  # the version is replaced
print(json.dumps({"pinned": pinned, "retained_mb": rss() - before}))
"""


def run_script(script: str, mode: str, env: dict | None = None) -> dict:
    """Run one of the scripts below in a fresh interpreter; its JSON answer."""
    out = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, check=True, cwd=REPO_ROOT,
                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})})
    return json.loads(out.stdout)


def run(mode: str, env: dict | None = None) -> dict:
    return run_script(SCRIPT, mode, env)


def test_freed_model_buffers_return_to_the_os_once_pinned():
    control = run("none")
    if control["retained_mb"] < 16:
        pytest.skip(f"this glibc returned the memory without help ({control['retained_mb']:.1f} MiB kept); nothing to show")
    pinned = run("pin")
    assert pinned["pinned"] is True
    assert pinned["retained_mb"] < 4, f"{pinned['retained_mb']:.1f} MiB of freed buffers still resident (unpinned: {control['retained_mb']:.1f})"


def test_environment_setting_takes_precedence():
    assert run("pin", {"MALLOC_MMAP_THRESHOLD_": "131072"})["pinned"] is False


TRIM_SCRIPT = """
import json, sys, threading
import numpy as np
from edgeops.agent.memory import trim_freed_memory

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024

kept = []
def update_work():  # an update's buffers on another thread: its own malloc arena
    blocks = [np.ones(64 << 10, np.uint8) for _ in range(512)]  # 32 MiB below the mmap threshold
    kept.append(blocks[-1])  # the last block pins the arena's top: free() alone cannot shrink it
    del blocks
t = threading.Thread(target=update_work)
t.start(); t.join()
before = rss()
ran = trim_freed_memory() if sys.argv[1] == "trim" else None
print(json.dumps({"ran": ran, "released_mb": before - rss()}))
"""


def run_trim(mode: str) -> dict:
    return run_script(TRIM_SCRIPT, mode)


def test_trim_returns_what_an_update_thread_freed():
    assert run_trim("none")["released_mb"] < 4  # without the trim the freed pages stay resident
    trimmed = run_trim("trim")
    assert trimmed["ran"] is True
    assert trimmed["released_mb"] > 20, f"only {trimmed['released_mb']:.1f} MiB of 32 freed MiB went back to the OS"


def test_the_daemon_trims_when_an_update_comes_to_rest(monkeypatch):
    """`edgeops agent run` trims at idle/committed/failed, never in the middle of an update."""
    import edgeops.agent.memory as memory
    from edgeops.agent.cli import daemon_hooks
    from edgeops.agent.statefile import State

    calls = []
    monkeypatch.setattr(memory, "trim_freed_memory", lambda: calls.append(1) or True)
    hooks = daemon_hooks()
    for state in (State.FETCHING, State.VERIFYING, State.INSTALLING, State.SELF_TESTING, State.ACTIVATING, State.PROBATION, State.ROLLING_BACK):
        hooks.on_state(state)
    assert calls == []
    for state in (State.COMMITTED, State.IDLE, State.FAILED):
        hooks.on_state(state)
    assert len(calls) == 3


ARENA_SCRIPT = """
import ctypes, json, os, sys, tempfile, threading
from edgeops.agent.memory import limit_malloc_arenas

limited = limit_malloc_arenas() if sys.argv[1] == "limit" else None
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
start = threading.Barrier(6)
def work():  # the daemon's threads: each allocates while the others do
    start.wait()
    for _ in range(2000):
        libc.free(libc.malloc(4096))
threads = [threading.Thread(target=work) for _ in range(6)]
for t in threads: t.start()
for t in threads: t.join()
path = tempfile.mktemp()
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
fp = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, fp)
libc.fclose(fp)
print(json.dumps({"limited": limited, "arenas": open(path).read().count("<heap nr=")}))
os.unlink(path)
"""


def run_arenas(mode: str, env: dict | None = None) -> dict:
    return run_script(ARENA_SCRIPT, mode, env)


def test_daemon_threads_share_one_malloc_arena():
    control = run_arenas("none")
    assert control["arenas"] > 1, "glibc gave these threads no arenas of their own; nothing to show"
    limited = run_arenas("limit")
    assert limited["limited"] is True and limited["arenas"] == 1, limited


def test_malloc_arena_max_in_the_environment_takes_precedence():
    assert run_arenas("limit", {"MALLOC_ARENA_MAX": "4"})["limited"] is False


def test_agent_run_limits_arenas_before_it_starts(monkeypatch, tmp_path):
    """`edgeops agent run` calls limit_malloc_arenas before it reads the config or starts a thread."""
    import edgeops.agent.memory as memory
    from click.testing import CliRunner

    from edgeops.agent.cli import agent

    calls = []
    monkeypatch.setattr(memory, "limit_malloc_arenas", lambda arenas=1: calls.append(arenas) or True)
    result = CliRunner().invoke(agent, ["run", "--config", str(tmp_path / "missing.toml")])
    assert calls == [1] and result.exit_code != 0  # then the missing config stops it


def test_the_daemon_loop_trims_every_interval_until_the_agent_stops(monkeypatch):
    import edgeops.agent.memory as memory
    from edgeops.agent.cli import serve_until_stopped

    now = [0.0]
    trims = []

    class Agent:  # stops after 100 waits of 1 s
        waits = 0

        def wait_stopped(self, timeout):
            self.waits += 1
            now[0] += timeout
            return self.waits > 100

    monkeypatch.setattr(memory, "trim_freed_memory", lambda: trims.append(now[0]) or True)
    serve_until_stopped(Agent(), trim_every_s=30.0, clock=lambda: now[0])
    assert trims == [30.0, 60.0, 90.0]
