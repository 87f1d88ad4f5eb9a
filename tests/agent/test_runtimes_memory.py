"""release_large_frees: model-sized buffers go back to the OS when freed (glibc).

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
from edgeops.agent.runtimes import release_large_frees

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


def run(mode: str, env: dict | None = None) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True, cwd=REPO_ROOT,
                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})})
    return json.loads(out.stdout)


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
from edgeops.agent.runtimes import trim_freed_memory

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
    out = subprocess.run([sys.executable, "-c", TRIM_SCRIPT, mode], capture_output=True, text=True, check=True, cwd=REPO_ROOT,
                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    return json.loads(out.stdout)


def test_trim_returns_what_an_update_thread_freed():
    assert run_trim("none")["released_mb"] < 4  # without the trim the freed pages stay resident
    trimmed = run_trim("trim")
    assert trimmed["ran"] is True
    assert trimmed["released_mb"] > 20, f"only {trimmed['released_mb']:.1f} MiB of 32 freed MiB went back to the OS"


def test_the_daemon_trims_when_an_update_comes_to_rest(monkeypatch):
    """`edgeops agent run` trims at idle/committed/failed, never in the middle of an update."""
    import edgeops.agent.runtimes as runtimes
    from edgeops.agent.cli import daemon_hooks
    from edgeops.agent.statefile import State

    calls = []
    monkeypatch.setattr(runtimes, "trim_freed_memory", lambda: calls.append(1) or True)
    hooks = daemon_hooks()
    for state in (State.FETCHING, State.VERIFYING, State.INSTALLING, State.SELF_TESTING, State.ACTIVATING, State.PROBATION, State.ROLLING_BACK):
        hooks.on_state(state)
    assert calls == []
    for state in (State.COMMITTED, State.IDLE, State.FAILED):
        hooks.on_state(state)
    assert len(calls) == 3
