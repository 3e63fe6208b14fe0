"""Sandbox benchmarks: `make bench`.

Cold start (a new sandbox until its kernel answers), the first call after 5 s of warm-up (the kernel
was started ahead; goal: within 100 ms), the `1+1` round trip (median; goal: at most 25 ms), and how
long Stop takes to end a run that sleeps (interrupted) and one that ignores the interrupt (the kernel
restarted, the spare taking over; goal: both within 2 s), and the first call after such a restart.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    from gptoss_lab.tools.sandbox import Sandbox

    cold = []
    for _ in range(3):
        t0 = time.perf_counter()
        with Sandbox() as sb:
            sb.run("1+1")
            cold.append(time.perf_counter() - t0)
            isolation = sb.isolation
    first = []
    for _ in range(3):
        with Sandbox() as sb:
            time.sleep(5)
            t0 = time.perf_counter()
            sb.run("1+1")
            first.append(time.perf_counter() - t0)
    with Sandbox() as sb:
        sb.wait_ready()
        trips = []
        for _ in range(200):
            t0 = time.perf_counter()
            sb.run("1+1")
            trips.append(time.perf_counter() - t0)
    stops = {}
    with Sandbox() as sb:
        sb.wait_ready()
        time.sleep(2)  # the spare is up
        for what, code in (("sleeping", "import time\ntime.sleep(60)"),
                           ("ignoring the interrupt", "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                                                      "while True:\n    pass")):
            threading.Timer(1.0, sb.interrupt).start()
            t0 = time.perf_counter()
            r = sb.run(code)
            stops[what] = (time.perf_counter() - t0 - 1.0, r.restarted)
        t0 = time.perf_counter()
        sb.run("1+1")
        after_restart = time.perf_counter() - t0
    print(f"sandbox isolation: {isolation}")
    print(f"  cold start to first answer   {statistics.median(cold) * 1000:7.0f} ms (median of 3)")
    print(f"  first call after 5 s warm-up {statistics.median(first) * 1000:7.1f} ms (median of 3; goal: within 100 ms)")
    print(f"  1+1 round trip               {statistics.median(trips) * 1000:7.1f} ms (median of 200; goal: at most 25 ms)")
    print(f"  1+1 round trip p95           {sorted(trips)[189] * 1000:7.1f} ms")
    for what, (seconds, restarted) in stops.items():
        print(f"  Stop -> run() returns, {what:<22} {seconds:5.2f} s{' (kernel restarted)' if restarted else ''}"
              " (goal: within 2 s)")
    print(f"  first call after that restart {after_restart * 1000:6.1f} ms (the spare kernel took over)")


if __name__ == "__main__":
    main()
