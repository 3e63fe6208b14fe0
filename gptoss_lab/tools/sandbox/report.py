"""The sandbox's report: every layer of isolation and every limit, and what holds of it here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .relay import MAX_FRAMES, QUEUE_MESSAGES, RELAY_MEMORY
from .run import MAX_MESSAGE_BYTES, MAX_READ_BYTES


@dataclass(frozen=True)
class SandboxReport:
    """What isolates the sandbox, layer by layer: each says what holds here, or why it cannot."""

    isolation: str
    layers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        width = max(map(len, self.layers), default=0)
        return "\n".join([f"isolation  {self.isolation}"] + [f"{k:<{width}}  {v}" for k, v in self.layers.items()])

    def as_dict(self) -> dict[str, Any]:
        return {"isolation": self.isolation, "layers": dict(self.layers)}


def describe(sb: Any, groups: dict[str, str]) -> SandboxReport:
    """``sb``'s layers; ``groups``: the cgroup controllers its kernel got (``{"memory": "cgroup v1", ...}``)."""
    tier = sb.isolation
    layers: dict[str, str] = {}
    if tier == "process":
        why = f" chosen by {sb.chosen_by}=process" if sb.chosen_by not in ("argument", "default") else ""
        layers["files"] = f"NOT isolated: the code sees your files and network (process tier{why})"
    else:
        layers["namespaces"] = "network (none, loopback included), PID, IPC, UTS; a mount namespace " \
                               "with system folders, the Python installation, /mnt/data and the shares only"
    layers["uid"] = (f"{sb.uid}: its own, leased (no other sandbox has it; not an account)" if sb.uid is not None
                     else "yours, in a user namespace" if tier == "bwrap+userns" else "yours")
    layers["user namespaces"] = ("disabled (bwrap --disable-userns)" if tier == "bwrap+userns"
                                 else "disabled (seccomp)" if sb._seccomp is not None and tier == "bwrap+uid"
                                 else "available inside: no seccomp filter here")
    layers["seccomp"] = sb._seccomp_note
    layers["memory"] = (f"{sb.memory_mb} MB resident ({groups['memory']}); " if "memory" in groups
                        else "no writable memory cgroup: ") + f"address space {sb.memory_mb + 1024} MB (RLIMIT_AS)"
    budget = f"{sb.cpu_seconds} CPU s for all its processes together"
    layers["cpu"] = (f"{budget} ({groups['cpuacct']})" if "cpuacct" in groups
                     else f"{budget} (read from /proc: its PID namespace)" if tier != "process"
                     else f"{sb.cpu_seconds} CPU s per process (RLIMIT_CPU) and its process group on timeout")
    layers["processes"] = (f"{sb.processes} ({groups['pids']} pids)" if "pids" in groups
                           else f"{sb.processes} per uid (RLIMIT_NPROC)")
    layers["files written"] = f"{sb.file_mb} MB each (RLIMIT_FSIZE)"
    mirror = sb._work.mirror
    layers["work dir"] = sb._work.limit or f"tmpfs of {sb.disk_mb} MB and {sb.files} files" + (
        f", copied to {mirror} after each run" if mirror is not None else "")
    layers["from the kernel"] = (f"read by a relay process under {RELAY_MEMORY >> 20} MB: frames over "
                                 f"{MAX_MESSAGE_BYTES >> 20} MB or messages of more than {MAX_FRAMES} frames dropped, "
                                 f"{QUEUE_MESSAGES} queued per socket, {MAX_READ_BYTES >> 20} MB of text read per run")
    return SandboxReport(tier, layers)
