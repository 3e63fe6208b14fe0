"""The sandbox's non-root tier (``bwrap+userns``), run for real by an unprivileged user.

CI runs the tests as root, where the sandbox picks ``bwrap+uid``: the tier every non-root user gets
would never run. So, as root, this module runs tests/unprivileged_probe.py as the user ``nobody``
(uid 65534), with an interpreter of its own: the project's venv lives under /root, which nobody
cannot read, so a venv of Debian's /usr/bin/python3 with the kernel's packages is built once in
/var/tmp (keyed by their versions in this venv, so it is rebuilt when they change) and reused. Not
as root, the probe runs directly with this interpreter: the tier is then the user's own.

The probe makes one ``Sandbox(disk_mb=8, files=100)``, runs model-like code in it, closes it, and
prints what it saw as JSON; then it waits while this module looks for anything the closed sandbox
left behind (processes, namespaces, the holder's tmpfs), and again once it has exited.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import queue
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PROBE = Path(__file__).resolve().with_name("unprivileged_probe.py")
NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"
VENV_PACKAGES = ("jupyter_client", "ipykernel", "pyseccomp")
# When this venv's exact versions cannot be had (a local build, a constraints file), the ranges the
# package asks for.
VENV_FALLBACK = ("jupyter_client>=8", "ipykernel>=6.29", "pyseccomp>=0.1.2,<0.2")
VENV_READY = "gptoss-lab-ready.json"
SECRET_VAR = "GPTOSS_LAB_TEST_SECRET"
PROBE_TIMEOUT = 90.0  # seconds for the probe's whole run; it takes ~10
NAMESPACES = ("pid", "mnt", "user", "net", "ipc", "uts")
AS_ROOT = os.getuid() == 0


# -- what the run needs ----------------------------------------------------------------------------


def require_tools() -> None:
    missing = [t for t in ("setpriv", "unshare", "nsenter") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: the non-root sandbox needs util-linux "
                    "(Debian/Ubuntu: apt install util-linux)", pytrace=False)
    if shutil.which("bwrap") is None:
        pytest.fail("bwrap not found: the sandbox needs bubblewrap (Debian/Ubuntu: apt install bubblewrap)",
                    pytrace=False)


def require_reachable_by_nobody() -> None:
    """nobody must reach the repository (the package and the probe) through every folder above it."""
    for folder in [REPO, *REPO.parents]:
        if not os.stat(folder).st_mode & stat.S_IXOTH:
            pytest.fail(f"{folder} is not enterable by other users (chmod o+x): the unprivileged probe runs "
                        f"as nobody and imports the package from {REPO}", pytrace=False)
    for f in (PROBE, REPO / "gptoss_lab" / "tools" / "sandbox" / "__init__.py"):
        if not os.stat(f).st_mode & stat.S_IROTH:
            pytest.fail(f"{f} is not readable by other users (chmod -R o+rX {REPO})", pytrace=False)


def _as_nobody(argv: list[str]) -> list[str]:
    return ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups", *argv]


def _run(argv: list[str], what: str, timeout: float = 600, **kw) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.fail(f"{what}: {e}", pytrace=False)


def unprivileged_python() -> Path:
    """A python that nobody may run, with the kernel's packages: built in /var/tmp once, then reused."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.fail(f"{SYSTEM_PYTHON} not found: the unprivileged probe needs a system python that the user "
                    "nobody can run (Debian/Ubuntu: apt install python3 python3-venv)", pytrace=False)
    versions = {name: metadata.version(name) for name in VENV_PACKAGES}
    key = hashlib.sha256(json.dumps([versions, os.path.realpath(SYSTEM_PYTHON)]).encode()).hexdigest()[:16]
    venv = Path(f"/var/tmp/gptoss-lab-unprivileged-venv-{key}")
    python = venv / "bin" / "python"
    lock_fd = os.open(f"{venv}.lock", os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        if os.fstat(lock_fd).st_uid != os.getuid():
            pytest.fail(f"{venv}.lock belongs to another user: remove it", pytrace=False)
        fcntl.flock(lock_fd, fcntl.LOCK_EX)  # two test runs at once build it once
        if _venv_ready(venv, versions):
            return python
        shutil.rmtree(venv, ignore_errors=True)  # half built, or not ours
        made = _run([SYSTEM_PYTHON, "-m", "venv", str(venv)], "python3 -m venv")
        if made.returncode != 0:
            pytest.fail(f"{SYSTEM_PYTHON} -m venv failed (Debian/Ubuntu: apt install python3-venv):\n"
                        f"{made.stderr[-2000:]}", pytrace=False)
        pip = [str(python), "-m", "pip", "install", "--no-input", "--quiet"]
        got = _run([*pip, *(f"{n}=={v}" for n, v in versions.items())], "pip install")
        if got.returncode != 0:
            got = _run([*pip, *VENV_FALLBACK], "pip install")
        if got.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            pytest.fail(f"pip could not install {', '.join(VENV_FALLBACK)} into {venv} "
                        "(is PyPI reachable?):\n"
                        f"{got.stderr[-3000:]}", pytrace=False)
        for root, dirs, files in os.walk(venv):  # chmod -R a+rX, links left alone
            for name in [*dirs, *files]:
                path = os.path.join(root, name)
                mode = os.lstat(path).st_mode
                if not stat.S_ISLNK(mode):
                    extra = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
                    if stat.S_ISDIR(mode) or mode & stat.S_IXUSR:
                        extra |= stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
                    os.chmod(path, stat.S_IMODE(mode) | extra)
        os.chmod(venv, 0o755)
        check = _run(_as_nobody([str(python), "-c", "import ipykernel, jupyter_client, pyseccomp, zmq"]),
                     "the unprivileged venv", timeout=120, cwd="/")
        if check.returncode != 0:
            pytest.fail(f"nobody cannot use {venv}:\n{check.stderr[-2000:]}", pytrace=False)
        (venv / VENV_READY).write_text(json.dumps(versions))
        return python
    finally:
        os.close(lock_fd)


def _venv_ready(venv: Path, versions: dict[str, str]) -> bool:
    try:
        st = os.lstat(venv)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
            return False  # made by someone else: never run what another user could have changed
        return json.loads((venv / VENV_READY).read_text()) == versions and (venv / "bin" / "python").exists()
    except (OSError, ValueError):
        return False


# -- what the test watches from outside ---------------------------------------------------------------


class Server:
    """A TCP server on 127.0.0.1 that keeps what every connection sent."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.got: list[bytes] = []
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    self.got.append(conn.recv(1000))
                except OSError:
                    self.got.append(b"")

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


def _stat(pid: str) -> tuple[str, int] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[19])


def _uid(pid: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _links(pid: str) -> set[str]:
    out = set()
    for ns in NAMESPACES:
        try:
            out.add(os.readlink(f"/proc/{pid}/ns/{ns}"))
        except OSError:
            pass
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):  # a namespace held open by a file descriptor
            try:
                out.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                pass
    except OSError:
        pass
    return out


def sandbox_namespaces(doc: dict) -> set[str]:
    """The namespaces the probe's holder and kernels lived in (not the machine's own)."""
    seen = [*doc["seen"], *([doc["holder"]] if doc["holder"] else [])]
    found = {v for info in seen for v in info["ns"].values() if v}
    mine = {v for v in doc["own_ns"].values() if v} | _links("self")
    return found - mine


def leftovers(doc: dict, since: int, skip: set[int]) -> list[str]:
    """Every process the probe's sandbox left: one it started, one in a namespace of its holder or
    kernels (or holding one open), and, as root, any process of nobody started since the probe."""
    started = {(info["pid"], info["start"]) for info in doc["seen"]}
    spaces = sandbox_namespaces(doc)
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) in skip or int(pid) == os.getpid():
            continue
        got = _stat(pid)
        if got is None or got[0] in "ZX":
            continue  # gone, or ended and waiting to be reaped
        why = []
        if (int(pid), got[1]) in started:
            why.append("started by the probe")
        uid = _uid(pid)
        # (A freed namespace's number is soon given to a new one: only the probe's user's count.)
        held = sorted(spaces & _links(pid)) if uid == doc["uid"] else []
        if held:
            why.append(f"in or holding the sandbox's namespaces {held}")
        if AS_ROOT and uid == NOBODY and got[1] >= since:
            why.append("a process of nobody started during the probe")
        if why:
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                cmd = "?"
            out.append(f"pid {pid} ({cmd[:200]}): {'; '.join(why)}")
    return out


def holder_ns_users(doc: dict) -> list[str]:
    """The processes in (or holding open) the mount namespace where the holder mounted the tmpfs."""
    if not doc["holder"] or not doc["holder"]["ns"]["mnt"]:
        return []
    mnt = doc["holder"]["ns"]["mnt"]
    return sorted(pid for pid in os.listdir("/proc") if pid.isdigit() and _uid(pid) == doc["uid"]
                  and (_stat(pid) or ("Z",))[0] not in "ZX" and mnt in _links(pid))


def _read_result(proc: subprocess.Popen[str], deadline: float) -> dict | None:
    lines: queue.Queue[str | None] = queue.Queue()

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=reader, daemon=True).start()
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return None
        if line is None:
            return None
        if line.startswith("PROBE-RESULT "):
            return json.loads(line[len("PROBE-RESULT "):])


@pytest.fixture(scope="module")
def probe():
    require_tools()
    t0 = time.monotonic()
    home = Path(tempfile.mkdtemp(prefix="gptoss-lab-unprivileged-home-"))
    (home / "tmp").mkdir()
    secret = f"gptoss-lab-unprivileged-secret-{secrets.token_hex(8)}"
    server = Server()
    env = {"HOME": str(home), "TMPDIR": str(home / "tmp"), SECRET_VAR: secret}
    if AS_ROOT:
        require_reachable_by_nobody()
        python = unprivileged_python()
        for p in (home, home / "tmp"):
            os.chown(p, NOBODY, NOBODY)
        argv = _as_nobody([str(python), str(PROBE), str(REPO), str(server.port)])
        env.update(PATH="/usr/local/bin:/usr/bin:/bin", LANG="C.UTF-8", PYTHONDONTWRITEBYTECODE="1")
    else:
        argv = [sys.executable, str(PROBE), str(REPO), str(server.port)]
        env = {**os.environ, **env}
    built = time.monotonic()
    errors = tempfile.TemporaryFile()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, env=env,
                            cwd=str(home), text=True)
    try:
        since = (_stat(str(proc.pid)) or ("", 0))[1]
        doc = _read_result(proc, time.monotonic() + PROBE_TIMEOUT)
        if doc is None:
            proc.kill()
            proc.wait()
            errors.seek(0)
            pytest.fail(f"the probe ({' '.join(argv)}) gave no result within {PROBE_TIMEOUT:.0f} s "
                        f"(exit status {proc.returncode}):\n{errors.read().decode(errors='replace')[-5000:]}",
                        pytrace=False)
        doc["probe_seconds"] = round(time.monotonic() - built, 2)
        doc["venv_seconds"] = round(built - t0, 2)
        # The sandbox is closed and the process that used it still lives, as a notebook's would.
        doc["left_while_alive"] = leftovers(doc, since, skip={proc.pid})
        doc["holder_ns_while_alive"] = holder_ns_users(doc)
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)
        doc["exit_status"] = proc.returncode
        deadline = time.monotonic() + 3  # what dies with the probe has a moment to exit
        while (left := leftovers(doc, since, skip=set())) and time.monotonic() < deadline:
            time.sleep(0.1)
        doc["left_after_exit"] = left
        doc["holder_ns_after_exit"] = holder_ns_users(doc)
        errors.seek(0)
        doc["stderr"] = errors.read().decode(errors="replace")[-5000:]
        doc["server_got"] = list(server.got)
        doc["home_after_exit"] = sorted(os.listdir(home))
        doc["repo_written"] = (REPO / "written-by-sandbox").exists()
        yield doc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        errors.close()
        server.close()
        shutil.rmtree(home, ignore_errors=True)


def on_the_way_to_python(doc: dict, path: str) -> bool:
    """Whether ``path`` is one of the folders the sandbox binds (or makes) for the probe's python."""
    return any(p == path or p.startswith(path + "/") for p in doc["python_prefixes"])


def _ran(doc: dict, name: str) -> dict:
    """One run's result; a step that raised in the probe fails here with its traceback."""
    if name not in doc["runs"]:
        pytest.fail(f"the probe did not run {name!r}: {json.dumps(doc['errors'], indent=1)}\n"
                    f"{doc.get('stderr')}", pytrace=False)
    return doc["runs"][name]


# -- what a user would notice -----------------------------------------------------------------------


def test_the_probe_ran_unprivileged_and_quickly(probe):
    assert probe["errors"] == {}, "\n".join(probe["errors"].values())
    assert probe["uid"] != 0 and probe["exit_status"] == 0, probe["stderr"]
    if AS_ROOT:
        assert probe["uid"] == NOBODY
    assert probe["ready_seconds"] < 30 and probe["probe_seconds"] < 60, probe["seconds"]


def test_the_tier_is_bwrap_userns(probe):
    assert probe["isolation"] == "bwrap+userns"
    assert probe["report"]["isolation"] == "bwrap+userns"
    assert probe["report"]["layers"]["uid"] == "yours, in a user namespace"


def test_state_is_kept_between_runs(probe):
    assert _ran(probe, "state_set")["error"] is None
    assert _ran(probe, "state_get")["text"] == "42\n"


def test_no_network_loopback_included(probe):
    got = _ran(probe, "network")
    assert got["error"] is None and got["json"] != "connected", got["text"]
    assert isinstance(got["json"], str) and "Error" in got["json"]
    # The control (the probe itself, outside the sandbox) came through; nothing from the sandbox did.
    assert probe["server_got"] == [b"probe-control\n"]


def test_the_parents_environment_is_invisible(probe):
    got = _ran(probe, "environment")["json"]
    assert got is not None, probe["runs"]["environment"]["text"]
    assert got["var"] is False and SECRET_VAR not in got["names"]
    assert got["value"] is False  # not in os.environ, nor in any /proc/*/environ it can read
    assert got["environ_files"] >= 1  # it did read its own


def test_files_outside_the_work_dir_are_unreadable(probe):
    got = _ran(probe, "files")["json"]
    assert got is not None, probe["runs"]["files"]["text"]
    for what, result in got["read"].items():
        path = probe["files_asked"]["readable"][what]
        if isinstance(result, list):  # a folder: only the way to the python installation may be in it
            assert all(on_the_way_to_python(probe, f"{path}/{name}") for name in result), (what, path, result)
        else:
            assert result.startswith("absent") or "Error" in result, (what, path, result)
    text = probe["runs"]["files"]["text"]
    readme = (REPO / "README.md").read_text().strip().splitlines()[0]
    assert "the user's own file" not in text and readme not in text


def test_the_users_files_are_unwritable(probe):
    got = _ran(probe, "files")["json"]
    for what in ("home", "repository", "/usr", "python"):
        assert got["write"][what] != "written", (what, probe["files_asked"]["writable"][what])
    assert "written-by-sandbox" not in probe["home_after"] + probe["home_after_exit"]
    assert not probe["repo_written"]
    # The controls: its work dir and its private /tmp.
    assert got["write"]["/mnt/data"] == "written" and got["write"]["/tmp"] == "written"


def test_nothing_outside_mnt_data_and_tmp_is_writable(probe):
    got = _ran(probe, "files")["json"]
    written = [what for what in ("/", "/etc", "/var", "/mnt", "/run") if got["write"][what] == "written"]
    # bubblewrap makes its root a tmpfs that the sandbox's own uid owns in a user namespace: without
    # --remount-ro it took writes in /, /etc, /var... counted in no limit (found by this test, fixed).
    assert written == [], (f"the sandbox wrote outside /mnt/data and /tmp: {written} ({got['write']}); "
                           f"its root: {_ran(probe, 'root fs')['json']}")
    root = _ran(probe, "root fs")["json"]
    assert root["read_only"] or root["mb_written_in_var"] == 0, root  # not 16 MB past an 8 MB work dir


def test_the_work_dir_is_limited_as_reported(probe):
    assert probe["report"]["layers"]["work dir"] == "tmpfs of 8 MB and 100 files"
    disk = _ran(probe, "disk")["json"]
    assert disk is not None and disk["errno"] == 28 and 6 <= disk["written"] <= 8, disk  # ENOSPC
    inodes = _ran(probe, "inodes")["json"]
    assert inodes is not None and inodes["errno"] == 28 and 50 <= inodes["created"] < 100, inodes
    assert _ran(probe, "after limits")["text"] == "ok\n"  # emptied, it works again
    mounts = probe["holder"]["mounts"]
    assert any("tmpfs" in m and "size=8192k" in m and "nr_inodes=100" in m for m in mounts), mounts


def test_user_namespaces_are_disabled_inside(probe):
    got = _ran(probe, "unshare")["json"]
    assert got is not None and got["rc"] != 0, probe["runs"]["unshare"]["text"]


def test_the_report_names_the_layers(probe):
    layers = probe["report"]["layers"]
    assert "disable-userns" in layers["user namespaces"]
    assert layers["seccomp"].startswith("on"), layers["seccomp"]
    assert "tmpfs" in layers["work dir"]


def test_a_crash_restarts_the_kernel(probe):
    crash = _ran(probe, "crash")
    assert crash["restarted"] and (crash["error"] or "").startswith("kernel died"), crash
    assert "restarted" in crash["text"]
    assert _ran(probe, "after crash")["text"] == "2\n"
    assert probe["restarts"] >= 1


def test_interrupt_from_another_thread_stops_a_sleep(probe):
    got = _ran(probe, "interrupt")
    assert got["error"] == "interrupted" and "slept through" not in got["text"], got
    assert got["after_interrupt_s"] <= 3.0, got
    assert _ran(probe, "after interrupt")["text"] == "41\n"  # the kernel's state is kept


def test_nothing_is_left_after_close(probe):
    holder = probe["holder"]
    assert holder is not None and holder["ns"]["mnt"] != probe["own_ns"]["mnt"], holder  # there was one
    assert any("bwrap" in info["cmd"] for info in probe["seen"]), "the probe saw no kernel: the check is void"
    after = probe["after_close"]
    assert after["children"] == [] and not after["holder_alive"], after
    assert probe["left_while_alive"] == [], "\n".join(probe["left_while_alive"])
    assert probe["left_after_exit"] == [], "\n".join(probe["left_after_exit"])


def test_the_holders_tmpfs_is_gone(probe):
    after = probe["after_close"]
    assert not after["workdir_exists"] and after["private_exists"] is False, after
    assert after["tmpdir"] == [], after["tmpdir"]  # its private folder (with the mount points) removed
    # No process is in, or holds open, the mount namespace the tmpfs lived in: it is freed (while
    # the process that closed the sandbox lives on, and after it exited).
    assert probe["holder"]["ns"]["mnt"], probe["holder"]
    assert probe["holder_ns_while_alive"] == [] and probe["holder_ns_after_exit"] == []
