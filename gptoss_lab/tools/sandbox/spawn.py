"""Starting the sandbox's processes from one thread that lives as long as this process."""

from __future__ import annotations

import queue
import subprocess
import threading
from typing import Any

# bubblewrap's --die-with-parent (and PR_SET_PDEATHSIG) follows the *thread* that started the
# process: start every one from one thread that lives as long as this process.
_requests: queue.Queue[tuple[list[str], dict[str, Any], queue.Queue[Any]]] = queue.Queue()
_spawner_lock = threading.Lock()
_spawner: threading.Thread | None = None


def _serve() -> None:
    while True:
        argv, kwargs, reply = _requests.get()
        try:
            reply.put(subprocess.Popen(argv, **kwargs))
        except Exception as e:  # handed back to the caller
            reply.put(e)


def spawn(argv: list[str], *, die_with_parent: bool = False, **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start ``argv`` from the long-lived spawner thread; ``die_with_parent`` adds PR_SET_PDEATHSIG."""
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = threading.Thread(target=_serve, name="gptoss-lab-sandbox-spawner", daemon=True)
            _spawner.start()
    if die_with_parent:
        argv = ["setpriv", "--pdeathsig", "KILL", "--", *argv]
    reply: queue.Queue[Any] = queue.Queue()
    _requests.put((argv, kwargs, reply))
    got = reply.get()
    if isinstance(got, Exception):
        raise got
    return got  # type: ignore[no-any-return]
