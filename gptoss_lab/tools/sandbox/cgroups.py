"""Bounds for a whole sandbox (all its processes together): cgroups where one is writable, and
otherwise the sandbox's processes read from ``/proc`` (found by their PID namespace).

``SandboxGroup`` makes fresh cgroups for one kernel start: memory (resident, swap included), pids,
and CPU accounting with a low CPU weight (a spinning sandbox does not starve the user's kernel).
cgroup v1 (one folder per controller) and v2 (one unified folder, where its controllers are
delegated to us) are both read; what could be had is in ``layers``.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _own_v1_paths() -> dict[str, str]:
    out = {}
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            parts = line.split(":", 2)
            if len(parts) == 3:
                for ctrl in parts[1].split(","):
                    out[ctrl] = parts[2]
    except OSError:
        pass
    return out


class SandboxGroup:
    """The cgroups of one kernel start, or none (``procs_files`` empty) where none is writable."""

    def __init__(self, name: str, memory_bytes: int, pids: int):
        self.dirs: dict[str, Path] = {}
        self.version = 0
        self._v2(name, memory_bytes, pids) or self._v1(name, memory_bytes, pids)

    def _v1(self, name: str, memory_bytes: int, pids: int) -> bool:
        own = _own_v1_paths()
        for ctrl, writes in (("memory", {"memory.limit_in_bytes": memory_bytes, "memory.memsw.limit_in_bytes": memory_bytes}),
                             ("pids", {"pids.max": pids}), ("cpuacct", {}), ("cpu", {"cpu.shares": 256})):
            root = CGROUP / ctrl / own.get(ctrl, "/").lstrip("/")
            if not (root.is_dir() and os.access(root, os.W_OK)):
                continue
            group = root / name
            try:
                group.mkdir()
                for file, value in writes.items():
                    if (group / file).exists():
                        (group / file).write_text(str(value))
            except OSError:
                _rmdir(group)
                continue
            self.dirs[ctrl] = group
        self.version = 1 if self.dirs else 0
        return bool(self.dirs)

    def _v2(self, name: str, memory_bytes: int, pids: int) -> bool:
        if not (CGROUP / "cgroup.controllers").exists():
            return False  # v1 or hybrid: its unified tree has no controllers for us
        own = _own_v1_paths().get("", "/")
        root = CGROUP / own.lstrip("/")
        try:
            enabled = (root / "cgroup.subtree_control").read_text().split()
        except OSError:
            return False
        if not {"memory", "pids"} <= set(enabled) or not os.access(root, os.W_OK):
            return False  # the controllers are not delegated to this process's cgroup
        group = root / name
        try:
            group.mkdir()
            (group / "memory.max").write_text(str(memory_bytes))
            if (group / "memory.swap.max").exists():
                (group / "memory.swap.max").write_text("0")
            (group / "pids.max").write_text(str(pids))
            if (group / "cpu.weight").exists():
                (group / "cpu.weight").write_text("25")
        except OSError:
            _rmdir(group)
            return False
        self.dirs = {"memory": group, "pids": group, "cpuacct": group, "cpu": group}
        self.version = 2
        return True

    @property
    def procs_files(self) -> list[str]:
        return sorted({str(d / "cgroup.procs") for d in self.dirs.values()})

    @property
    def layers(self) -> dict[str, str]:
        v = f"cgroup v{self.version}"
        return {ctrl: v for ctrl in self.dirs}

    def cpu_seconds(self) -> float | None:
        """CPU time of every process the kernel start ran, dead ones included."""
        group = self.dirs.get("cpuacct")
        if group is None:
            return None
        try:
            if self.version == 2:
                stat = dict(line.split() for line in (group / "cpu.stat").read_text().splitlines())
                return int(stat["usage_usec"]) / 1e6
            return int((group / "cpuacct.usage").read_text()) / 1e9
        except (OSError, ValueError, KeyError):
            return None

    def oom_killed(self) -> bool:
        group = self.dirs.get("memory")
        if group is None:
            return False
        try:
            name = "memory.events" if self.version == 2 else "memory.oom_control"
            fields = dict(line.split() for line in (group / name).read_text().splitlines())
            return int(fields.get("oom_kill", 0)) > 0
        except (OSError, ValueError):
            return False

    def remove(self) -> None:
        for group in set(self.dirs.values()):
            _rmdir(group)
        self.dirs = {}


def _rmdir(group: Path) -> None:
    for _ in range(50):
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.02)  # its last processes are still exiting


# -- the sandbox's processes, from /proc ------------------------------------------------------------


def pid_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def processes_in(namespace: str) -> list[int]:
    """Every process in the PID namespace ``namespace`` (as ``/proc/PID/ns/pid`` names it)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit() and pid_namespace(int(d)) == namespace:
            out.append(int(d))
    return out


def cpu_seconds_of(pids: list[int]) -> float:
    """CPU time of the processes ``pids`` and of the children they have reaped.

    A reaped process's time is in its reaper's ``cutime``: summed over the living, nothing is counted
    twice, and in a PID namespace every orphan is reaped by its init, which lives as long as it does.
    """
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / CLK_TCK


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
