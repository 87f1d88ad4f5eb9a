"""A stack sampler over every thread of a Python program (cProfile sees only the main thread,
and the console works in its ingest, MQTT and reconciler threads).

    python bench/sampler.py OUT.txt -- -m edgeops.cli fleet serve --config fleet.toml

Runs the program (``-m MODULE args`` or ``SCRIPT args``) with a thread that reads every other
thread's stack each ``EDGEOPS_SAMPLE_S`` seconds (default 0.005); at exit (a normal exit, also
after SIGTERM where the program handles it) writes to OUT.txt the functions on top of the stack
(self) and anywhere on it (inclusive), as shares of the program's CPU time, and the CPU seconds
of each thread by name.

Each sample is weighted by the CPU time the thread used since the previous sample (its own CPU
clock, ``pthread_getcpuclockid``): a thread blocked in ``select``, a lock, a queue or a socket
read, or waiting for the GIL or for a CPU, weighs nothing. (Counting the threads the kernel shows
runnable instead over-counted, on a busy host, threads that had just woken another one and were
waiting for a CPU.)
"""

from __future__ import annotations

import atexit
import os
import re
import runpy
import sys
import threading
import time
from collections import Counter



def _cpu_s(ident: int) -> float | None:
    """CPU seconds a thread has used (None once it is gone)."""
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(ident))
    except (OSError, OverflowError):
        return None


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

    last: dict[int, float] = {}
    per_thread: Counter = Counter()

    def sample() -> None:
        while not stop.wait(interval):
            names = {t.ident: t.name for t in threading.enumerate()}
            for tid, frame in sys._current_frames().items():
                if tid == sampler.ident:
                    continue
                cpu = _cpu_s(tid)
                if cpu is None:
                    continue
                used = cpu - last.get(tid, cpu)
                last[tid] = cpu
                if used <= 0:
                    continue
                samples[0] += 1
                per_thread[re.sub(r"\d+", "N", names.get(tid, "?"))] += used  # pools' threads together
                own[_where(frame.f_code)] += used
                seen = set()
                f = frame
                while f is not None:
                    w = _where(f.f_code)
                    if w not in seen:
                        seen.add(w)
                        incl[w] += used
                    f = f.f_back

    def report() -> None:
        stop.set()
        n = max(sum(own.values()), 1e-9)
        with open(out, "w") as fh:
            fh.write(f"{samples[0]} busy samples every {interval * 1000:.1f} ms over {time.monotonic() - t0:.0f} s: {n:.2f} CPU-s of the threads sampled\n\nthreads (CPU s):\n")
            for name, c in per_thread.most_common(20):
                fh.write(f"{c:8.2f}  {100 * c / n:5.1f}%  {name}\n")
            fh.write("\nself:\n")
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
