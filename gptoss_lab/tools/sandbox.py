"""The python tool's sandbox: a sibling ipykernel, driven with jupyter_client, never the user's kernel.

The strongest isolation this machine allows is chosen and named (``Sandbox.isolation``):

``bwrap+uid`` (as root)
    bubblewrap with new network, PID, IPC and UTS namespaces; only system folders, the Python
    installation and the sandbox's own working directory are visible; the environment is cleared;
    all capabilities dropped and the kernel runs as an unprivileged uid of its own; the kernel talks
    over IPC sockets (a new network namespace cannot reach loopback TCP); resource limits below.
``bwrap+userns`` (not root)
    the same in an unprivileged user namespace, as the user's own uid.
``process`` (only when asked for: ``Sandbox(isolation="process")``)
    a plain child process with the resource limits and a cleared environment. It is NOT isolated
    from your files or your network.

Limits: ``memory_mb`` caps the kernel's resident memory with a cgroup where one is writable (past it
the kernel is killed and restarted, and the model told its state was lost), and caps its address
space at ``memory_mb`` + 1 GiB with RLIMIT_AS everywhere (one huge allocation fails with MemoryError
and the kernel lives on). ``cpu_seconds`` is the kernel's lifetime CPU time (RLIMIT_CPU),
``processes`` its processes and threads (RLIMIT_NPROC and a pids cgroup), ``file_mb`` the largest
file it may write (RLIMIT_FSIZE). ``timeout`` is the wall-clock time of one ``run()``: past it the
code is interrupted, and if it does not stop the kernel is restarted.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import GptossLabError

LAUNCHER = (Path(__file__).with_name("_launcher.py")).read_text()
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
DEFAULT_TIMEOUT = 120.0  # seconds one run() may take
DATA_DIR = "/mnt/data"
# Rich outputs (images, HTML) of one run kept for display: they live in the user's kernel and notebook.
MAX_OUTPUTS = 50
MAX_OUTPUT_BYTES = 8 * 2**20
SHARE_DIR = "/mnt/user"
_ids = iter(range(1, 1 << 30))


class SandboxUnavailableError(GptossLabError, RuntimeError):
    """No sandboxing is possible here (bubblewrap missing or refused), and none was waived."""


class SandboxError(GptossLabError, RuntimeError):
    """The sandbox kernel could not be started."""


@dataclass
class RunResult:
    """What one ``run()`` produced.

    ``text`` is what the model reads: stdout, stderr, the result's text and tracebacks, in order,
    capped (head and tail kept, the cut said). ``outputs`` are the rich outputs for display
    (MIME bundles: image/png, text/html, text/plain). ``restarted`` says the kernel was restarted and
    its state lost.
    """

    text: str
    outputs: list[dict[str, Any]] = field(default_factory=list)
    timed_out: bool = False
    error: str | None = None
    restarted: bool = False
    seconds: float = 0.0


class _Capped:
    """Text kept within ``limit`` characters: the head and a rolling tail, with the count of what was cut."""

    def __init__(self, limit: int):
        self.limit = limit
        self.head: list[str] = []
        self.head_len = 0
        self.tail = ""
        self.total = 0

    def add(self, text: str) -> None:
        self.total += len(text)
        half = self.limit // 2
        if self.head_len < half:
            take = text[: half - self.head_len]
            self.head.append(take)
            self.head_len += len(take)
            text = text[len(take):]
        if text:
            self.tail = (self.tail + text)[-half:]

    def value(self) -> str:
        head = "".join(self.head)
        cut = self.total - len(head) - len(self.tail)
        if cut <= 0:
            return head + self.tail
        return f"{head}\n[... {cut} characters cut: the output was {self.total} characters ...]\n{self.tail}"


# bubblewrap's --die-with-parent follows the *thread* that started it: start every sandbox from one
# thread that lives as long as this process, so that a sandbox dies with its kernel and never sooner.
_spawn_requests: queue.Queue = queue.Queue()


def _spawner() -> None:
    while True:
        argv, kwargs, reply = _spawn_requests.get()
        try:
            reply.put(subprocess.Popen(argv, **kwargs))
        except Exception as e:  # handed back to the caller
            reply.put(e)


_spawner_started = threading.Lock()
_spawner_thread: threading.Thread | None = None


def _spawn(argv: list[str], **kwargs: Any) -> subprocess.Popen:
    global _spawner_thread
    with _spawner_started:
        if _spawner_thread is None:
            _spawner_thread = threading.Thread(target=_spawner, name="gptoss-lab-sandbox-spawner", daemon=True)
            _spawner_thread.start()
    reply: queue.Queue = queue.Queue()
    _spawn_requests.put((argv, kwargs, reply))
    got = reply.get()
    if isinstance(got, Exception):
        raise got
    return got


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


def _cgroup_roots() -> dict[str, Path]:
    """Writable cgroup v1 folders (memory, pids) under this process's own cgroup."""
    roots = {}
    try:
        mine = dict(line.strip().split(":", 2)[1:] for line in open("/proc/self/cgroup") if ":" in line)
    except OSError:
        return roots
    for ctrl in ("memory", "pids"):
        base = Path("/sys/fs/cgroup") / ctrl / mine.get(ctrl, "/").lstrip("/")
        if base.is_dir() and os.access(base, os.W_OK):
            roots[ctrl] = base
    return roots


class Sandbox:
    """A stateful Python kernel that runs model-written code in isolation.

    Parameters
    ----------
    timeout
        Seconds one ``run()`` may take (wall clock) before it is interrupted.
    memory_mb, cpu_seconds, processes, file_mb
        Resource limits (see the module docstring for what each one bounds).
    share
        Folders of yours the code may read, at ``/mnt/user/<name>``: a list (read-only) or a mapping
        ``{path: "rw"}`` for write access.
    workdir
        The sandbox's working directory (``/mnt/data`` inside); default a new temporary folder.
    isolation
        ``"auto"`` (the strongest available; refuses to run unsandboxed) or ``"process"`` (no
        isolation from files or network: only resource limits; an explicit choice).
    max_output_chars
        The most text the model reads from one run (head and tail kept).
    warm
        Start the kernel now, in the background, so that the first ``run()`` is fast.
    """

    def __init__(
        self,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        memory_mb: int = 2048,
        cpu_seconds: int = 600,
        processes: int = 64,
        file_mb: int = 256,
        share: Iterable[str | os.PathLike] | Mapping[str | os.PathLike, str] = (),
        workdir: str | os.PathLike | None = None,
        isolation: str = "auto",
        max_output_chars: int = 20_000,
        warm: bool = True,
    ):
        self.timeout = timeout
        self.memory_mb = memory_mb
        self.cpu_seconds = cpu_seconds
        self.processes = processes
        self.file_mb = file_mb
        self.max_output_chars = max_output_chars
        items = share.items() if isinstance(share, Mapping) else ((s, "ro") for s in share)
        self.shares = {Path(p).resolve(): mode for p, mode in items}
        for p, mode in self.shares.items():
            if mode not in ("ro", "rw") or not p.is_dir():
                raise ValueError(f"share: {p} must be an existing folder, shared 'ro' or 'rw' (got {mode!r})")
        names = [p.name for p in self.shares]
        if len(set(names)) != len(names):
            raise ValueError(f"share: two folders have the same name, and would meet at {SHARE_DIR}/<name>: {names}")
        self.isolation = self._choose(isolation)  # before any folder is made: a refusal leaves nothing behind
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="gptoss-sandbox-")).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.uid = (60000 + (os.getpid() * 31 + next(_ids)) % 5000) if self.isolation == "bwrap+uid" else None
        self._rundir = Path(tempfile.mkdtemp(prefix="gptoss-sandbox-run-"))
        self._cgroups: dict[str, Path] = {}
        self._proc: subprocess.Popen | None = None
        self._client: Any = None
        self._ready: threading.Event | None = None
        self._start_error: BaseException | None = None
        self._lock = threading.Lock()
        self.closed = False
        self.restarts = 0
        self._owners: dict[Path, tuple[int, int, int]] = {}
        self._interrupt = threading.Event()
        if self.uid is not None:
            if not self._own_workdir:  # lent to the sandbox's uid until close(), then handed back
                st = self.workdir.stat()
                self._owners[self.workdir] = (st.st_uid, st.st_gid, st.st_mode & 0o7777)
            os.chown(self.workdir, self.uid, self.uid)
            os.chmod(self.workdir, 0o711)  # bwrap, root without capabilities, must be able to enter it
            for p, mode in self.shares.items():
                if mode == "rw":  # lent to the sandbox's uid until close(), then handed back
                    st = p.stat()
                    self._owners[p] = (st.st_uid, st.st_gid, st.st_mode & 0o7777)
                    os.chown(p, self.uid, self.uid)
        self._ready = None
        if warm:
            self._start(background=True)

    # -- isolation ----------------------------------------------------------------------------------

    @staticmethod
    def _choose(isolation: str) -> str:
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

    def _limits(self) -> dict[str, Any]:
        return {
            "address_space": (self.memory_mb + 1024) * 2**20,
            "cpu_seconds": self.cpu_seconds,
            "processes": self.processes,
            "file_bytes": self.file_mb * 2**20,
            "open_files": 256,
            "uid": self.uid,
        }

    def _env(self) -> dict[str, str]:
        return {
            "PATH": f"{sys.prefix}/bin:/usr/local/bin:/usr/bin:/bin",
            "HOME": DATA_DIR if self.isolation != "process" else str(self.workdir),
            "LANG": "C.UTF-8",
            "USER": "sandbox",
            "MPLBACKEND": "Agg",
            "MALLOC_ARENA_MAX": "1",  # an idle kernel then maps far less address space
            # numpy & co. would start a thread per core: on a big machine that alone passes `processes`
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "PYTHONNOUSERSITE": "1",
            "IPYTHONDIR": "/tmp/ipython" if self.isolation != "process" else str(self._rundir / "ipython"),
            "MPLCONFIGDIR": "/tmp/matplotlib" if self.isolation != "process" else str(self._rundir / "mpl"),
        }

    def _bwrap_argv(self, launcher_argv: list[str]) -> list[str]:
        argv = [shutil.which("bwrap") or "bwrap", "--die-with-parent", "--new-session"]
        argv += ["--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
        if self.isolation == "bwrap+uid":
            argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        else:
            argv += ["--unshare-user"]
        argv += ["--hostname", "sandbox", "--ro-bind", "/usr", "/usr"]
        for d in ("/bin", "/sbin", "/lib", "/lib64", "/lib32", "/etc/ld.so.cache", "/etc/alternatives",
                  "/etc/localtime", "/etc/ssl/certs", "/etc/mime.types"):
            argv += ["--ro-bind-try", d, d]
        # A private /tmp that anyone in there may write, held in memory: capped at memory_mb, and counted
        # in the memory cgroup where there is one.
        argv += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--size", str(self.memory_mb * 2**20), "--tmpfs", "/tmp"]
        made: set[str] = set()
        for prefix in dict.fromkeys([sys.base_prefix, sys.prefix, str(self._rundir)]):
            parent = Path(prefix).parent
            for anc in reversed([parent, *parent.parents]):
                # Every folder above a bound path must be enterable by the sandbox's user (bwrap makes
                # them 0700); /usr is bound whole, and /tmp, /proc and /dev are mounted already.
                if str(anc) not in ("/", "/tmp", *made) and not str(anc).startswith(("/usr", "/proc", "/dev")):
                    argv += ["--perms", "0755", "--dir", str(anc)]  # else bwrap makes them 0700
                    made.add(str(anc))
            mode = "--bind" if prefix == str(self._rundir) else "--ro-bind"
            argv += [mode, prefix, prefix]
        argv += ["--perms", "0755", "--dir", "/mnt", "--bind", str(self.workdir), DATA_DIR]
        if self.shares:
            argv += ["--perms", "0755", "--dir", SHARE_DIR]
        for p, m in self.shares.items():
            argv += ["--bind" if m == "rw" else "--ro-bind", str(p), f"{SHARE_DIR}/{p.name}"]
        argv += ["--chdir", DATA_DIR, "--clearenv"]
        for k, v in self._env().items():
            argv += ["--setenv", k, v]
        return argv + ["--"] + launcher_argv

    # -- lifecycle ----------------------------------------------------------------------------------

    def _start(self, background: bool) -> None:
        from jupyter_client.connect import write_connection_file

        self._ready = threading.Event()
        self._start_error = None
        conn = self._rundir / f"kernel-{next(_ids)}.json"
        write_connection_file(str(conn), transport="ipc", ip=str(self._rundir / "sock"))
        if self.uid is not None:
            os.chmod(self._rundir, 0o711)  # the kernel (its own uid) makes its socket files in here
            os.chown(self._rundir, self.uid, self.uid)
            os.chown(conn, self.uid, self.uid)
        spec = dict(self._limits(), connection_file=str(conn))
        if self.isolation == "process":
            spec["parent_pid"] = os.getpid()
        # -I: the working directory (writable by the model) is never on sys.path, so no module of the
        # model's can run before the limits are set.
        launcher = [sys.executable, "-I", "-c", LAUNCHER, json.dumps(spec)]
        if self.isolation == "process":
            argv, cwd, env = launcher, str(self.workdir), self._env()
        else:
            argv, cwd, env = self._bwrap_argv(launcher), None, {}
        argv = self._in_cgroups(argv)
        try:
            self._proc = _spawn(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        except OSError as e:
            self._start_error = SandboxError(f"the sandbox kernel could not be launched: {e}")
            self._ready.set()
            return

        def connect() -> None:
            from jupyter_client import BlockingKernelClient

            try:
                client = BlockingKernelClient(connection_file=str(conn))
                client.load_connection_file()
                client.start_channels()
                deadline = time.monotonic() + 60
                while True:
                    try:
                        client.wait_for_ready(timeout=2)
                        break
                    except RuntimeError:
                        if self._proc is None or self._proc.poll() is not None or time.monotonic() > deadline:
                            raise
                self._client = client
            except BaseException as e:
                try:
                    client.stop_channels()
                except Exception:
                    pass
                proc = self._proc
                err = proc.stderr.read().decode(errors="replace")[-2000:] if proc and proc.poll() is not None and proc.stderr else ""
                self._start_error = SandboxError(f"the sandbox kernel did not start ({e}) {err}".strip())
            finally:
                self._ready.set()

        if background:
            threading.Thread(target=connect, name="gptoss-lab-sandbox-connect", daemon=True).start()
        else:
            connect()

    def _in_cgroups(self, argv: list[str]) -> list[str]:
        """Wrap ``argv`` so that it enters fresh memory and pids cgroups before it runs, where writable."""
        if self.isolation == "process" and os.getuid() != 0:
            return argv
        self._drop_cgroups()
        roots = _cgroup_roots()
        files = []
        for ctrl, root in roots.items():
            group = root / f"gptoss-sandbox-{os.getpid()}-{next(_ids)}"
            try:
                group.mkdir()
            except OSError:
                continue
            try:
                if ctrl == "memory":
                    (group / "memory.limit_in_bytes").write_text(str(self.memory_mb * 2**20))
                    swap = group / "memory.memsw.limit_in_bytes"
                    if swap.exists():
                        swap.write_text(str(self.memory_mb * 2**20))
                else:
                    (group / "pids.max").write_text(str(self.processes))
            except OSError:
                group.rmdir()
                continue
            self._cgroups[ctrl] = group
            files.append(str(group / "cgroup.procs"))
        if not files:
            return argv
        script = 'for f in $GPTOSS_CGROUPS; do echo $$ > "$f" || exit 97; done; exec "$@"'
        return ["/bin/sh", "-c", script.replace("$GPTOSS_CGROUPS", " ".join(files)), "sh", *argv]

    @property
    def limits_enforced(self) -> list[str]:
        """Which bounds hold, in words (for the report and the tool's declaration)."""
        out = ["RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_NPROC", "RLIMIT_FSIZE"]
        return out + [f"cgroup:{c}" for c in self._cgroups]

    def wait_ready(self, timeout: float = 60.0) -> None:
        if self._ready is None:  # warm=False: the first run starts the kernel
            self._start(background=False)
        if not self._ready.wait(timeout):
            raise SandboxError(f"the sandbox kernel was not ready after {timeout:.0f} s")
        if self._start_error is not None:
            raise self._start_error

    def _kill(self) -> None:
        if self._client is not None:
            try:
                self._client.stop_channels()
            except Exception:
                pass
            self._client = None
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # bwrap and everything in its namespace
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
        if proc is not None and proc.stderr:
            proc.stderr.close()
        self._drop_cgroups()

    def _drop_cgroups(self) -> None:
        for group in self._cgroups.values():
            for _ in range(50):
                try:
                    group.rmdir()
                    break
                except OSError:
                    time.sleep(0.02)  # its last processes are still exiting
        self._cgroups = {}

    def restart(self) -> None:
        """Kill the kernel and start a fresh one (its state is lost)."""
        if self.closed:
            raise SandboxError("this sandbox is closed")
        self._kill()
        self.restarts += 1
        self._start(background=False)
        self.wait_ready()

    def close(self) -> None:
        """Stop the kernel and everything it started; remove its temporary folders."""
        if self.closed:
            return
        self.closed = True
        self.interrupt()
        got = self._lock.acquire(timeout=5)  # let a run in progress end (it was just interrupted)
        try:
            self._kill()
        finally:
            if got:
                self._lock.release()
        for folder, (uid, gid, mode) in self._owners.items():
            for path in [folder, *folder.rglob("*")]:
                try:
                    if path.lstat().st_uid == self.uid:
                        os.lchown(path, uid, gid)
                except OSError:
                    pass
            try:
                os.chmod(folder, mode)
            except OSError:
                pass
        shutil.rmtree(self._rundir, ignore_errors=True)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"<Sandbox {self.isolation}, workdir {self.workdir}, timeout {self.timeout:g} s>"

    def interrupt(self) -> None:
        """Interrupt the code that is running now, if any (as the kernel's interrupt button does).

        Safe from any thread: the thread running the code sends the request (ZMQ sockets are not
        shared between threads)."""
        self._interrupt.set()

    def _send_interrupt(self) -> None:
        client = self._client
        client.control_channel.send(client.session.msg("interrupt_request", content={}))

    # -- running code -------------------------------------------------------------------------------

    def run(self, code: str, *, timeout: float | None = None) -> RunResult:
        """Run ``code`` in the kernel and collect what it printed, returned and displayed."""
        if self.closed:
            raise SandboxError("this sandbox is closed")
        with self._lock:
            t0 = time.monotonic()
            try:
                self.wait_ready()
            except SandboxError:
                self.restart()  # a kernel that failed to start gets one more try
            if self.closed:
                raise SandboxError("this sandbox is closed")
            result = self._execute(code, self.timeout if timeout is None else timeout)
            result.seconds = time.monotonic() - t0
            return result

    def _dead(self) -> str | None:
        """Why the kernel process is gone, or None while it lives."""
        if self._proc is None:
            return "closed" if self.closed else "not running"
        code = self._proc.poll()
        if code is None:
            return None
        group = self._cgroups.get("memory")
        if group is not None:
            try:
                control = dict(line.split() for line in (group / "memory.oom_control").read_text().splitlines())
                if int(control.get("oom_kill", 0)) > 0:
                    return f"killed for using more than {self.memory_mb} MB of memory"
            except (OSError, ValueError):
                pass
        if code > 128:
            code = -(code - 128)
        if code < 0:
            try:
                return f"killed by signal {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exited with status {code}"

    def _execute(self, code: str, timeout: float) -> RunResult:
        client = self._client
        text = _Capped(self.max_output_chars)
        outputs: list[dict[str, Any]] = []
        error = None
        self._interrupt.clear()
        msg_id = client.execute(code, store_history=False, allow_stdin=False)
        deadline = time.monotonic() + timeout
        interrupted_at = None
        by_user = False
        kept_bytes = dropped = 0
        while True:
            why = self._dead()
            if why is not None:
                return self._crashed(text, outputs, why)
            now = time.monotonic()
            if interrupted_at is None and (now > deadline or self._interrupt.is_set()):
                interrupted_at, by_user = now, now <= deadline
                self._send_interrupt()
            if interrupted_at is not None and now - interrupted_at > 3.0:
                # The code ignored the interrupt (a C loop, a handler of its own): restart the kernel.
                self.restart()
                text.add(f"\n[timed out after {timeout:g} s and did not stop when interrupted: the kernel "
                         "was restarted and its state (variables, imports) was lost]")
                return RunResult(text.value(), outputs, timed_out=True, error="timeout", restarted=True)
            try:
                msg = client.get_iopub_msg(timeout=0.05)
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                text.add(content["text"])
            elif kind in ("execute_result", "display_data"):
                data = content.get("data", {})
                size = sum(len(str(v)) for v in data.values())
                if len(outputs) < MAX_OUTPUTS and kept_bytes + size <= MAX_OUTPUT_BYTES:
                    outputs.append(data)  # for display; the model reads only the text below
                    kept_bytes += size
                else:
                    dropped += 1
                if kind == "execute_result" and "text/plain" in data:
                    text.add(data["text/plain"] + "\n")
                elif "image/png" in data:
                    text.add("[image]\n")
            elif kind == "error":
                error = f"{content['ename']}: {content['evalue']}"
                text.add(ANSI.sub("", "\n".join(content["traceback"])) + "\n")
            elif kind == "status" and content["execution_state"] == "idle":
                break
        if dropped:
            text.add(f"\n[{dropped} rich outputs not kept: past {MAX_OUTPUTS} outputs or {MAX_OUTPUT_BYTES >> 20} MB]")
        if interrupted_at is None:
            return RunResult(text.value(), outputs, error=error)
        if by_user:
            text.add("\n[interrupted: the run was stopped; the kernel's state is kept]")
            return RunResult(text.value(), outputs, error="interrupted")
        text.add(f"\n[timed out after {timeout:g} s: interrupted; the kernel's state is kept]")
        return RunResult(text.value(), outputs, timed_out=True, error="timeout")

    def _crashed(self, text: _Capped, outputs: list[dict[str, Any]], why: str) -> RunResult:
        self.restart()
        text.add(f"\n[the kernel died ({why}); it was restarted and its state (variables, imports) was lost]")
        return RunResult(text.value(), outputs, error=f"kernel died: {why}", restarted=True)
