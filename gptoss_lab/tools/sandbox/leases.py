"""The sandbox's uid (bwrap+uid tier), and the owners of the user's folders lent to it.

A uid is leased with an flock on a file in a machine-wide folder: held for the sandbox's life, it is
released with the file descriptors of a parent that dies. Folders lent to the uid (a work dir or an
``rw`` share of the user's) and the tmpfs mounts of the sandbox are written to a journal beside the
lock first; whoever next takes a lease finds journals whose lock is free and puts things back.
"""

from __future__ import annotations

import fcntl
import grp
import json
import os
import pwd
import shutil
import stat
import subprocess
from pathlib import Path

from .isolation import SandboxError

# Sandbox uids: 0x70000000 up, a range systemd leaves unused (docs/UIDS-GIDS.md: above the container
# ranges, below the "foreign" range), far from real accounts (< 60000) and DynamicUser (61184-65519).
UID_BASE = 0x70000000
UID_SPAN = 1 << 16
LEASE_DIR = Path("/var/lib/gptoss-lab/sandbox-uids")  # machine-wide: two root processes must not share a uid


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
