"""What the sandbox's kernel is allowed: the tier, its uid, its folders, the bubblewrap command line,
the seccomp filter, and the report of every layer that holds (or why it cannot here).

Tiers, strongest first: ``bwrap+uid`` (as root: bubblewrap, an unprivileged uid of its own),
``bwrap+userns`` (not root: bubblewrap in a user namespace, as the user's own uid), ``process``
(only when asked: a child process with resource limits, NOT isolated from files or network).
"""

from __future__ import annotations

import errno
import fcntl
import grp
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import GptossLabError

DATA_DIR = "/mnt/data"
SHARE_DIR = "/mnt/user"
SOCKET_DIR = "/run/kernel"  # where the kernel makes its sockets, inside
# Sandbox uids: 0x70000000 up, a range systemd leaves unused (docs/UIDS-GIDS.md: above the container
# ranges, below the "foreign" range), far from real accounts (< 60000) and DynamicUser (61184-65519).
UID_BASE = 0x70000000
UID_SPAN = 1 << 16
LEASE_DIR = Path("/var/lib/gptoss-lab/sandbox-uids")  # machine-wide: two root processes must not share a uid


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


def choose_tier(isolation: str) -> str:
    if isolation == "process":
        return "process"
    if isolation != "auto":
        raise ValueError(f"isolation must be 'auto' or 'process', not {isolation!r}")
    ok, why = bwrap_works()
    if not ok:
        raise SandboxUnavailableError(
            f"cannot sandbox model-written code: {why}; or pass isolation='process' to run it with "
            "resource limits only, NOT isolated from your files and network"
        )
    return "bwrap+uid" if os.getuid() == 0 else "bwrap+userns"


# -- the uid, and the owners of folders lent to it ---------------------------------------------------


def _taken_by_accounts(uid: int) -> bool:
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
            return True
        except KeyError:
            pass
    for name in ("/etc/subuid", "/etc/subgid"):  # ranges lent to rootless containers
        try:
            for line in Path(name).read_text().splitlines():
                parts = line.split(":")
                if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                    if int(parts[1]) <= uid < int(parts[1]) + int(parts[2]):
                        return True
        except OSError:
            pass
    return False


def _lease_dir() -> Path:
    try:
        LEASE_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
        return LEASE_DIR
    except OSError:
        from ...harmony.vocab import cache_dir

        d = cache_dir() / "sandbox-uids"
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        return d


class UidLease:
    """A uid for one sandbox, held with an flock for the sandbox's life: no other sandbox (of any
    process) gets it while it is held, and a parent that dies releases it with its file descriptors.

    Folders lent to the uid (a work dir or ``rw`` share of the user's) are written to a journal
    beside the lock first; whoever next takes a lease finds journals whose lock is free and gives
    those folders back to their owners. So the user's folders get their owner back even when the
    parent was killed.
    """

    def __init__(self, uid: int, lock_fd: int, folder: Path):
        self.uid, self._fd, self._folder = uid, lock_fd, folder
        self._journal = folder / f"{uid}.json"
        self.lent: dict[str, list[int]] = {}
        self.mounts: list[str] = []  # tmpfs mounts of this sandbox, unmounted if its parent dies

    @classmethod
    def acquire(cls) -> UidLease:
        folder = _lease_dir()
        restore_orphaned_folders(folder)
        start = (os.getpid() * 7919 + int.from_bytes(os.urandom(2), "little")) % UID_SPAN
        for k in range(UID_SPAN):
            uid = UID_BASE + (start + k) % UID_SPAN
            fd = os.open(folder / f"{uid}.lock", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            if _taken_by_accounts(uid) or _uid_has_processes(uid):
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                continue
            return cls(uid, fd, folder)
        raise SandboxError("no free sandbox uid: every one in the range is in use")

    def _write(self) -> None:
        tmp = self._journal.with_suffix(".tmp")
        tmp.write_text(json.dumps({"uid": self.uid, "folders": self.lent, "mounts": self.mounts}))
        os.replace(tmp, self._journal)

    def lend(self, path: Path) -> None:
        """Give ``path`` to this uid (until :meth:`give_back`); its owner is written down first."""
        st = path.stat()
        self.lent[str(path)] = [st.st_uid, st.st_gid, st.st_mode & 0o7777]
        self._write()
        os.chown(path, self.uid, self.uid)

    def note_mount(self, path: Path) -> None:
        self.mounts.append(str(path))
        self._write()

    def forget_mount(self, path: Path) -> None:
        if str(path) in self.mounts:
            self.mounts.remove(str(path))
            self._write()

    def give_back(self) -> None:
        _restore(self.uid, self.lent, [])
        self.lent = {}
        self._write()

    def release(self) -> None:
        self.give_back()
        self._journal.unlink(missing_ok=True)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
        except OSError:
            pass


def _restore(uid: int, folders: dict[str, list[int]], mounts: list[str]) -> None:
    for mount in sorted(mounts, key=len, reverse=True):  # a parent killed with its mounts in place
        subprocess.run(["umount", "-l", mount], capture_output=True, timeout=30)
    for mount in mounts:
        shutil.rmtree(Path(mount).parent if Path(mount).name == "data-mount" else mount, ignore_errors=True)
    from .links import walk

    for folder, (owner, group, mode) in folders.items():
        root = Path(folder)
        for path in walk(root, seconds=600.0):
            try:
                st = os.lstat(path)
                if st.st_uid == uid:
                    os.lchown(path, owner, group)
                    if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o6000:
                        os.chmod(path, st.st_mode & 0o1777)  # no set-id bits from the sandbox's files
            except OSError:
                pass
        try:
            os.chmod(root, mode)
            os.lchown(root, owner, group)
        except OSError:
            pass


def restore_orphaned_folders(folder: Path) -> None:
    """Give back folders lent by sandboxes whose parent died (their lock is free)."""
    for journal in folder.glob("*.json"):
        lock = journal.with_suffix(".lock")
        try:
            fd = os.open(lock, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # its sandbox is alive
        try:
            data = json.loads(journal.read_text())
            _restore(int(data["uid"]), {k: list(v) for k, v in data["folders"].items()}, list(data.get("mounts", [])))
            journal.unlink()
        except Exception:  # a journal that cannot be read or applied must never stop a sandbox from starting
            pass
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _uid_has_processes(uid: int) -> bool:
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if d.stat().st_uid == uid:
                    return True
            except OSError:
                pass
    return False


# -- the work area: a size- and inode-limited tmpfs for /mnt/data, one tiny tmpfs per kernel's sockets --


def _mount_tmpfs(options: str, target: Path, enter: list[str]) -> None:
    subprocess.run([*enter, "mount", "-t", "tmpfs", "-o", options, "gptoss-sandbox", str(target)],
                   check=True, capture_output=True, timeout=30)


def _unmount(target: Path, enter: list[str]) -> None:
    subprocess.run([*enter, "umount", "-l", str(target)], capture_output=True, timeout=30)


class WorkArea:
    """Where the kernel may write on this machine.

    ``data`` (its ``/mnt/data``) is one tmpfs of ``disk_mb`` and ``files`` inodes. Each kernel start
    gets its sockets on a fresh tmpfs of its own (64 KB, 32 inodes) under ``private``, a folder of the
    parent's that the sandbox never sees: what a kernel plants there goes with it, and a full work
    dir cannot stop the next kernel from starting. As root the mounts are made on the host (plain
    paths); otherwise in a holder process's own user and mount namespaces, reached through
    ``/proc/<holder>/root``, and kernels are started inside those namespaces. Where neither works, or
    the user gave a work dir of their own, ``limit`` says what is not limited.
    """

    def __init__(self, tier: str, disk_mb: int, files: int, workdir: Path | None, lease: UidLease | None):
        self.tier = tier
        self.lease = lease
        self.owner = lease.uid if lease is not None else None
        self.private = Path(tempfile.mkdtemp(prefix="gptoss-sandbox-run-"))  # 0700, the parent's only
        self.base = self.private / "data-mount"
        self.base.mkdir(mode=0o711)
        self.holder: subprocess.Popen[bytes] | None = None
        self.mounts: list[Path] = []
        self._sockets = 0
        self.limit: str | None = None  # None: limited as asked
        opts = f"size={disk_mb * 2**20},nr_inodes={files},mode=0711"
        if tier == "bwrap+uid":
            try:
                self._mount(opts, self.base)
            except (OSError, subprocess.SubprocessError) as e:
                self.limit = f"not limited: the tmpfs could not be mounted ({e})"
        elif tier == "bwrap+userns":
            self._start_holder()
            if self.holder is not None:
                try:
                    self._mount(opts, self.base)
                except (OSError, subprocess.SubprocessError) as e:
                    self.limit = f"not limited: the tmpfs could not be mounted ({e})"
        else:
            self.limit = "not limited: the process tier has no mount namespace"
        self.reach = Path(f"/proc/{self.holder.pid}/root") if self.holder is not None else Path("/")
        self.own_data = workdir is None
        self.data = self.base / "data" if workdir is None else workdir
        if workdir is None:
            self.host(self.data).mkdir()
            if self.owner is not None:
                os.chown(self.host(self.data), self.owner, self.owner)
            os.chmod(self.host(self.data), 0o711)  # bwrap, root without capabilities, must enter it
        else:
            self.limit = "not limited: it is your own folder (workdir=)"

    def _start_holder(self) -> None:
        if not shutil.which("unshare") or not shutil.which("nsenter"):
            self.limit = "not limited: util-linux's unshare and nsenter are needed to mount a tmpfs without root"
            return
        from .kernel import spawn

        holder = spawn(["unshare", "-Urm", "/bin/sh", "-c", "echo ok && exec sleep infinity"], stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, die_with_parent=True)
        assert holder.stdout is not None
        if holder.stdout.readline().strip() == b"ok":
            self.holder = holder
        else:
            holder.kill()
            holder.wait()
            self.limit = "not limited: user namespaces cannot mount a tmpfs here"

    def _mount(self, options: str, target: Path) -> None:
        if self.lease is not None:
            self.lease.note_mount(target)  # first: a parent killed later still gets it unmounted
        _mount_tmpfs(options, target, self.enter())
        self.mounts.append(target)

    def host(self, path: Path) -> Path:
        """``path`` (as named where the kernels start) as this process reaches it."""
        return Path(str(self.reach) + str(path)) if self.holder is not None else path

    @property
    def data_host(self) -> Path:
        return self.host(self.data)

    def enter(self) -> list[str]:
        """The command prefix that runs a command where this area's mounts are visible."""
        if self.holder is None:
            return []
        return ["nsenter", "-t", str(self.holder.pid), "-U", "-m", "--preserve-credentials", "--"]

    def new_socket_dir(self) -> Path:
        """A fresh folder for one kernel's sockets, on a tmpfs of its own where mounts can be made."""
        self._sockets += 1
        d = self.private / f"sock-{self._sockets}"
        d.mkdir(mode=0o700)
        if self.tier != "process" and (self.holder is not None or self.tier == "bwrap+uid"):
            owner = f",uid={self.owner},gid={self.owner}" if self.owner is not None else ""
            try:
                self._mount(f"size=65536,nr_inodes=32,mode=0700{owner}", d)
            except (OSError, subprocess.SubprocessError):
                pass  # a plain folder of the parent's: still out of the other kernels' reach
        if self.owner is not None:
            os.chown(self.host(d), self.owner, self.owner)
        return d

    def drop_socket_dir(self, d: Path) -> None:
        if d in self.mounts:
            _unmount(d, self.enter())
            self.mounts.remove(d)
            if self.lease is not None:
                self.lease.forget_mount(d)
        shutil.rmtree(self.host(d), ignore_errors=True)

    def close(self) -> None:
        for target in reversed(self.mounts):
            _unmount(target, self.enter())
            if self.lease is not None:
                self.lease.forget_mount(target)
        self.mounts = []
        if self.holder is not None:
            self.holder.send_signal(signal.SIGKILL)
            self.holder.wait()
            if self.holder.stdout:
                self.holder.stdout.close()
            self.holder = None
        shutil.rmtree(self.private, ignore_errors=True)


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
