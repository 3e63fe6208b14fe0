"""Sandbox benchmarks: `make bench`.

Cold start (a new sandbox until its kernel answers), the first call after 5 s of warm-up (the kernel
was started ahead; goal: within 100 ms), and the `1+1` round trip (median; goal: at most 25 ms).
"""

from __future__ import annotations

import statistics
import sys
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
    print(f"sandbox isolation: {isolation}")
    print(f"  cold start to first answer   {statistics.median(cold) * 1000:7.0f} ms (median of 3)")
    print(f"  first call after 5 s warm-up {statistics.median(first) * 1000:7.1f} ms (median of 3; goal: within 100 ms)")
    print(f"  1+1 round trip               {statistics.median(trips) * 1000:7.1f} ms (median of 200; goal: at most 25 ms)")
    print(f"  1+1 round trip p95           {sorted(trips)[189] * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
