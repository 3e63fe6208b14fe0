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


def walk(folder: Path, *, seconds: float = SCAN_SECONDS) -> list[str]:
    """Every path under ``folder`` (itself first), symlinks not followed, walked with a stack of its own
    (a tree of any depth) for at most ``seconds``; never raises."""
    out: list[str] = []
    if not os.path.lexists(folder):
        return out
    out.append(str(folder))
    end = time.monotonic() + seconds
    stack = [str(folder)]
    while stack and time.monotonic() < end:
        top = stack.pop()
        try:
            entries = list(os.scandir(top))
        except OSError:
            continue
        for entry in entries:
            out.append(entry.path)
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
            except OSError:
                pass
    return out


def outward_links(folder: Path, *, remove: bool) -> list[str]:
    """The symlinks under ``folder`` that resolve outside it, as ``name -> target`` (removed if asked).

    Walked for at most :data:`SCAN_SECONDS`; never raises."""
    try:
        root = os.path.realpath(folder)
    except (OSError, ValueError):
        return []
    found: list[str] = []
    for path in walk(folder)[1:]:
        try:
            if not os.path.islink(path):
                continue
            target = os.readlink(path)
            if _inside(os.path.realpath(path), root):
                continue
            if remove:
                os.unlink(path)
            found.append(f"{os.path.relpath(path, folder)} -> {target}")
        except (OSError, ValueError, RuntimeError):
            continue
    return found
