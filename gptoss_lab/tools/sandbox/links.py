"""Links the code leaves in folders the user will read later (the work dir, ``rw`` shares).

A symlink made in the sandbox is read on the host: ``share/notes -> /home/you/.ssh/id_rsa`` would
point the user's own later reads and writes elsewhere. After every run and at close, links that
lead outside the folder they are in are removed, and the run's text says so.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

SCAN_SECONDS = 2.0  # a huge share is walked for at most this long per run


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def outward_links(folder: Path, *, remove: bool) -> list[str]:
    """The symlinks under ``folder`` that resolve outside it, as ``name -> target`` (removed if asked)."""
    try:
        root = os.path.realpath(folder)
    except OSError:
        return []
    found: list[str] = []
    end = time.monotonic() + SCAN_SECONDS
    for top, dirs, files in os.walk(folder, followlinks=False):
        for name in dirs + files:
            path = os.path.join(top, name)
            if not os.path.islink(path):
                continue
            try:
                target = os.readlink(path)
                if _inside(os.path.realpath(path), root):
                    continue
                if remove:
                    os.unlink(path)
            except OSError:
                continue
            found.append(f"{os.path.relpath(path, folder)} -> {target}")
        if time.monotonic() > end:
            break
    return found
