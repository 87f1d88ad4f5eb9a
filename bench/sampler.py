"""A stack sampler over every thread of a Python program (cProfile sees only the main thread,
and the console works in its ingest, MQTT and reconciler threads).

    python bench/sampler.py OUT.txt -- -m edgeops.cli fleet serve --config fleet.toml

Runs the program (``-m MODULE args`` or ``SCRIPT args``) with a thread that reads every other
thread's stack each ``EDGEOPS_SAMPLE_S`` seconds (default 0.005); at exit (a normal exit, also
after SIGTERM where the program handles it) writes to OUT.txt the functions most often on top of
a stack that was not waiting (self) and anywhere on it (inclusive), as shares of the samples.
Only threads the kernel shows running (``R`` in /proc/self/task/TID/stat) count: a thread
blocked in ``select``, a lock, a queue or a socket read, or waiting for the GIL, is left out, so
the shares are of the program's CPU time.
"""

from __future__ import annotations

import atexit
import os
import runpy
import sys
import threading
import time
from collections import Counter



def _running(native_id: int) -> bool:
    try:
        with open(f"/proc/self/task/{native_id}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"R"
    except OSError:
        return False


def _where(code) -> str:
    return f"{code.co_name} ({os.path.relpath(code.co_filename)}:{code.co_firstlineno})"


def main() -> None:
    out, sep, *rest = sys.argv[1:]
    assert sep == "--", "usage: sampler.py OUT -- (-m MODULE | SCRIPT) ARGS"
    interval = float(os.environ.get("EDGEOPS_SAMPLE_S", "0.005"))
    own: Counter = Counter()
    incl: Counter = Counter()
    samples = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval):
            natives = {t.ident: t.native_id for t in threading.enumerate()}
            for tid, frame in sys._current_frames().items():
                if tid == sampler.ident or not _running(natives.get(tid) or 0):
                    continue
                samples[0] += 1
                own[_where(frame.f_code)] += 1
                seen = set()
                f = frame
                while f is not None:
                    w = _where(f.f_code)
                    if w not in seen:
                        seen.add(w)
                        incl[w] += 1
                    f = f.f_back

    def report() -> None:
        stop.set()
        n = max(samples[0], 1)
        with open(out, "w") as fh:
            fh.write(f"{samples[0]} busy samples every {interval * 1000:.1f} ms over {time.monotonic() - t0:.0f} s\n\nself:\n")
            for w, c in own.most_common(40):
                fh.write(f"{100 * c / n:6.1f}%  {w}\n")
            fh.write("\ninclusive:\n")
            for w, c in incl.most_common(60):
                fh.write(f"{100 * c / n:6.1f}%  {w}\n")

    sampler = threading.Thread(target=sample, daemon=True, name="sampler")
    t0 = time.monotonic()
    sampler.start()
    atexit.register(report)
    if rest[0] == "-m":
        sys.argv = [rest[1], *rest[2:]]
        runpy.run_module(rest[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = rest
        runpy.run_path(rest[0], run_name="__main__")


if __name__ == "__main__":
    main()
