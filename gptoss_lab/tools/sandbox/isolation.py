"""What the sandbox's kernel is allowed: the tier, the bubblewrap command line, its environment, the
seccomp filter and the resource limits. (Its uid: ``leases``; where it may write: ``workarea``.)

Tiers, strongest first: ``bwrap+uid`` (as root: bubblewrap, an unprivileged uid of its own),
``bwrap+userns`` (not root: bubblewrap in a user namespace, as the user's own uid), ``process``
(only when asked: a child process with resource limits, NOT isolated from files or network).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import GptossLabError

DATA_DIR = "/mnt/data"
SHARE_DIR = "/mnt/user"
SOCKET_DIR = "/run/kernel"  # where the kernel makes its sockets, inside


class SandboxUnavailableError(GptossLabError, RuntimeError):
    """No sandboxing is possible here (bubblewrap missing or refused), and none was waived."""


class SandboxError(GptossLabError, RuntimeError):
    """The sandbox kernel could not be started, or the sandbox is closed."""


def bwrap_works() -> tuple[bool, str]:
    """Whether bubblewrap can create the namespaces the sandbox needs here."""
    exe = shutil.which("bwrap")
    if not exe:
        return False, "bubblewrap is not installed (Debian/Ubuntu: apt install bubblewrap)"
    argv = [exe, "--ro-bind", "/", "/", "--unshare-net", "--unshare-pid", "--die-with-parent", "true"]
    if os.getuid() != 0:
        argv[1:1] = ["--unshare-user"]
    probe = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return False, f"bubblewrap cannot create namespaces here: {probe.stderr.strip()}"
    return True, ""


ENV_ISOLATION = "GPTOSS_LAB_ISOLATION"  # the isolation a Sandbox() takes when given none (binder/start sets it)


def choose_tier(isolation: str) -> str:
    if isolation == "process":
        return "process"
    if isolation != "auto":
        raise ValueError(f"isolation must be 'auto' or 'process', not {isolation!r}")
    ok, why = bwrap_works()
    if not ok:
        raise SandboxUnavailableError(
            f"cannot sandbox model-written code: {why}; or pass isolation='process' (or set "
            f"{ENV_ISOLATION}=process) to run it with resource limits only, NOT isolated from your files and network"
        )
    return "bwrap+uid" if os.getuid() == 0 else "bwrap+userns"


# -- seccomp -------------------------------------------------------------------------------------

_CLONE_NAMESPACES = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)
# Refused outright: new namespaces and mounts, kernel keyrings and modules, BPF, tracing, and the
# io_uring and userfaultfd surfaces; nothing a notebook needs (AF_NETLINK stays: ipykernel uses it).
REFUSED = (
    "unshare", "setns", "mount", "umount2", "pivot_root", "fsopen", "fsmount", "fsconfig", "fspick", "move_mount",
    "open_tree", "mount_setattr", "bpf", "userfaultfd", "keyctl", "add_key", "request_key", "ptrace",
    "process_vm_readv", "process_vm_writev", "perf_event_open", "kexec_load", "kexec_file_load", "init_module",
    "finit_module", "delete_module", "open_by_handle_at", "name_to_handle_at", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "acct", "quotactl", "swapon", "swapoff", "reboot", "settimeofday", "clock_settime",
    "adjtimex", "iopl", "ioperm", "lookup_dcookie", "vhangup", "syslog",
)


def seccomp_program() -> tuple[bytes | None, str]:
    """The filter as BPF for ``bwrap --seccomp``, or None and why it cannot be had here."""
    try:
        import pyseccomp as sc
    except (ImportError, RuntimeError, OSError) as e:  # RuntimeError: libseccomp is not installed
        return None, f"off: {e}"
    f = sc.SyscallFilter(sc.ALLOW)
    for flag in _CLONE_NAMESPACES:
        f.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")  # its flags cannot be inspected: glibc falls back to clone
    refused = 0
    for name in REFUSED:
        try:
            f.add_rule(sc.ERRNO(errno.EPERM), name)
            refused += 1
        except (OSError, ValueError):
            pass  # not a syscall of this architecture
    fd = os.memfd_create("gptoss-seccomp", 0)
    try:
        with os.fdopen(os.dup(fd), "wb") as out:
            f.export_bpf(out)
        os.lseek(fd, 0, os.SEEK_SET)
        with os.fdopen(fd, "rb") as src:
            return src.read(), f"on: {refused} system calls and namespace-creating clone() refused"
    except OSError as e:
        return None, f"off: the filter could not be built ({e})"


# -- the command line ----------------------------------------------------------------------------


@dataclass
class Layout:
    """What one kernel start binds where."""

    data: Path  # the work dir, as bwrap sees it
    sockets: Path  # this start's socket folder, as bwrap sees it
    shares: dict[Path, str] = field(default_factory=dict)
    seccomp_fd: int | None = None


def sandbox_env(tier: str, home: str) -> dict[str, str]:
    inside = tier != "process"
    return {
        "PATH": f"{sys.prefix}/bin:/usr/local/bin:/usr/bin:/bin",
        "HOME": DATA_DIR if inside else home,
        "LANG": "C.UTF-8",
        "USER": "sandbox",
        "MPLBACKEND": "Agg",
        "MALLOC_ARENA_MAX": "1",  # an idle kernel then maps far less address space
        # numpy & co. would start a thread per core: on a big machine that alone passes `processes`
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONNOUSERSITE": "1",
        # Configuration and runtime files in the private /tmp of each start, never in /mnt/data: what
        # the code leaves in its work dir cannot change how the next kernel starts.
        "IPYTHONDIR": "/tmp/ipython" if inside else f"{home}/.ipython",
        "MPLCONFIGDIR": "/tmp/matplotlib" if inside else f"{home}/.matplotlib",
        "JUPYTER_CONFIG_DIR": "/tmp/jupyter-config" if inside else f"{home}/.jupyter",
        "JUPYTER_DATA_DIR": "/tmp/jupyter-data" if inside else f"{home}/.jupyter-data",
        "JUPYTER_RUNTIME_DIR": "/tmp/jupyter-runtime" if inside else f"{home}/.jupyter-runtime",
    }


def bwrap_argv(tier: str, layout: Layout, tmp_bytes: int, command: list[str]) -> list[str]:
    argv = [shutil.which("bwrap") or "bwrap", "--die-with-parent", "--new-session"]
    argv += ["--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    if tier == "bwrap+uid":
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        # the user's own uid and gid, also when started inside a holder's namespace (where we are 0)
        argv += ["--unshare-user", "--disable-userns", "--uid", str(os.getuid()), "--gid", str(os.getgid())]
    argv += ["--hostname", "sandbox", "--ro-bind", "/usr", "/usr"]
    argv += ["--perms", "0755", "--dir", "/etc", "--perms", "0755", "--dir", "/etc/ssl"]  # else bwrap makes them 0700
    for d in ("/bin", "/sbin", "/lib", "/lib64", "/lib32", "/etc/ld.so.cache", "/etc/alternatives",
              "/etc/localtime", "/etc/ssl/certs", "/etc/mime.types"):
        argv += ["--ro-bind-try", d, d]
    # A private /tmp that anyone in there may write, held in memory: capped, and counted in the
    # memory cgroup where there is one.
    argv += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--size", str(tmp_bytes), "--tmpfs", "/tmp"]
    made: set[str] = set()
    for prefix in dict.fromkeys([sys.base_prefix, sys.prefix]):
        parent = Path(prefix).parent
        for anc in reversed([parent, *parent.parents]):
            # Every folder above a bound path must be enterable by the sandbox's user (bwrap makes
            # them 0700); /usr is bound whole, and /tmp, /proc and /dev are mounted already.
            if str(anc) not in ("/", "/tmp", *made) and not str(anc).startswith(("/usr", "/proc", "/dev")):
                argv += ["--perms", "0755", "--dir", str(anc)]
                made.add(str(anc))
        argv += ["--ro-bind", prefix, prefix]
    argv += ["--perms", "0755", "--dir", "/run", "--bind", str(layout.sockets), SOCKET_DIR]
    argv += ["--perms", "0755", "--dir", "/mnt", "--bind", str(layout.data), DATA_DIR]
    if layout.shares:
        argv += ["--perms", "0755", "--dir", SHARE_DIR]
    for p, m in layout.shares.items():
        argv += ["--bind" if m == "rw" else "--ro-bind", str(p), f"{SHARE_DIR}/{p.name}"]
    if layout.seccomp_fd is not None:
        argv += ["--seccomp", str(layout.seccomp_fd)]
    # bwrap's root is a tmpfs the sandbox's user owns in a user namespace: read-only, so that only
    # /mnt/data, /tmp and the shares take writes (each bounded), not /, /etc, /var...
    argv += ["--remount-ro", "/", "--chdir", DATA_DIR, "--clearenv"]
    for k, v in sandbox_env(tier, DATA_DIR).items():
        argv += ["--setenv", k, v]
    return argv + ["--"] + command


def limits(memory_mb: int, cpu_seconds: int, processes: int, file_mb: int, uid: int | None) -> dict[str, Any]:
    """The resource limits the launcher sets on itself before it becomes the kernel."""
    return {
        "address_space": (memory_mb + 1024) * 2**20,
        "cpu_seconds": cpu_seconds,
        "processes": processes,
        "file_bytes": file_mb * 2**20,
        "open_files": 256,
        "uid": uid,
    }
