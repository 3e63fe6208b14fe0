"""Model servers run here on loopback (llama.cpp, vLLM): built or installed from the package registries into
the cache, for the remote backend's tests, ``gptoss-lab serve-test-model`` and ``make bench``."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections.abc import Callable


def wait_ready(proc: subprocess.Popen, url: str, seconds: float, *, headers: dict[str, str] | None = None,
               ok: Callable[[bytes], bool] = lambda body: True, log: Callable[[], str] = lambda: "") -> None:
    """Poll ``url`` until it answers 200 (and ``ok(body)``); a process that exits, or ``seconds`` that pass,
    stop it with the server's last words."""
    deadline = time.monotonic() + seconds
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {log()[-2000:]}")
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as r:
                if r.status == 200 and ok(r.read()):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError(f"the server did not become ready in {seconds:.0f} s: {log()[-2000:]}")
        time.sleep(0.5)


def stop(proc: subprocess.Popen, grace: float = 60) -> None:
    """Stop a server started in a session of its own, with every process of it (vLLM's engine core is a
    child that outlives a killed API server otherwise)."""
    import os
    import signal

    def signal_group(sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    signal_group(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    signal_group(signal.SIGKILL)
    proc.wait()
