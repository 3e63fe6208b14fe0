"""Where the sandbox's kernel may write on this machine: a size- and inode-limited tmpfs for its
``/mnt/data``, and a tiny tmpfs per kernel start for its sockets."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from .leases import UidLease
from .links import walk
from .spawn import spawn


def copy_tree(src: Path, dst: Path, *, owner: int | None, group: int | None = None) -> None:
    """Regular files and folders of ``src`` into ``dst`` where new or changed (size, mtime); links,
    devices and set-id bits are never copied. Never raises: what cannot be copied is left."""
    import stat

    for path in walk(src, seconds=60.0)[1:]:
        target = dst / os.path.relpath(path, src)
        try:
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode):
                if not target.is_dir():
                    target.mkdir(mode=0o755)
                    if owner is not None:
                        os.chown(target, owner, owner if group is None else group)
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            try:
                old = os.lstat(target)
                if stat.S_ISREG(old.st_mode) and (old.st_size, old.st_mtime_ns) == (st.st_size, st.st_mtime_ns):
                    continue
            except FileNotFoundError:
                pass
            tmp = target.with_name(f".{target.name}.gptoss-copy")
            shutil.copyfile(path, tmp, follow_symlinks=False)
            os.chmod(tmp, st.st_mode & 0o777)
            os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
            if owner is not None:
                os.chown(tmp, owner, owner if group is None else group)
            os.replace(tmp, target)
        except OSError:
            continue


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
    ``/proc/<holder>/root``, and kernels are started inside those namespaces. A work dir of the user's
    is a ``mirror``: copied in, and copied back after each run. Where no tmpfs can be had, ``limit``
    says what is not limited.
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
        # A folder of the user's (workdir=) is not written by the sandbox: it is copied into the tmpfs,
        # and what the code makes there is copied back after every run (limited like the rest).
        self.mirror = workdir if workdir is not None and self.limit is None else None
        self.data = workdir if workdir is not None and self.mirror is None else self.base / "data"
        if self.data != workdir:
            self.host(self.data).mkdir()
            if self.owner is not None:
                os.chown(self.host(self.data), self.owner, self.owner)
            os.chmod(self.host(self.data), 0o711)  # bwrap, root without capabilities, must enter it
        if self.mirror is not None:
            copy_tree(self.mirror, self.host(self.data), owner=self.owner)
        elif workdir is not None:
            self.limit = f"{self.limit}; your own folder (workdir=) is written directly"

    @property
    def user_folder(self) -> Path:
        """Where the user finds /mnt/data's files: their own folder, else the tmpfs itself."""
        return self.mirror if self.mirror is not None else self.data_host

    def sync(self) -> None:
        """Copy new and changed files of /mnt/data into the user's folder (nothing is deleted there)."""
        if self.mirror is not None:
            st = os.stat(self.mirror)
            copy_tree(self.host(self.data), self.mirror, owner=st.st_uid if os.getuid() == 0 else None,
                      group=st.st_gid)

    def _start_holder(self) -> None:
        if not shutil.which("unshare") or not shutil.which("nsenter"):
            self.limit = "not limited: util-linux's unshare and nsenter are needed to mount a tmpfs without root"
            return
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
