"""One sandbox kernel's life: start, connect, interrupt, and a shutdown that escalates (a shutdown
request, then SIGTERM, then SIGKILL), with every socket to it bounded.

The parent reads the kernel with a ZMQ client whose sockets refuse messages over
``MAX_MESSAGE_BYTES`` and queue at most ``QUEUE_MESSAGES`` per channel: whatever the code in the
kernel sends, and whenever it sends it (after ``run()`` returned too), the user's own kernel holds at
most a few hundred MB of it. The connection file lives in a folder the sandbox cannot reach; the
sockets in a fresh folder per start, on the sandbox's bounded tmpfs.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cgroups import SandboxGroup, cpu_seconds_of, kill_all, pid_namespace, processes_in
from .isolation import SOCKET_DIR, Layout, SandboxError, WorkArea, bwrap_argv, sandbox_env
from .run import MAX_MESSAGE_BYTES

LAUNCHER = (Path(__file__).with_name("_launcher.py")).read_text()
QUEUE_MESSAGES = 64  # per channel: what the kernel sends beyond it while nobody reads is dropped
_ids = iter(range(1, 1 << 30))

# bubblewrap's --die-with-parent (and PR_SET_PDEATHSIG) follows the *thread* that started the
# process: start every one from one thread that lives as long as this process.
_requests: queue.Queue[tuple[list[str], dict[str, Any], queue.Queue[Any]]] = queue.Queue()
_spawner_lock = threading.Lock()
_spawner: threading.Thread | None = None


def _serve() -> None:
    while True:
        argv, kwargs, reply = _requests.get()
        try:
            reply.put(subprocess.Popen(argv, **kwargs))
        except Exception as e:  # handed back to the caller
            reply.put(e)


def spawn(argv: list[str], *, die_with_parent: bool = False, **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start ``argv`` from the long-lived spawner thread; ``die_with_parent`` adds PR_SET_PDEATHSIG."""
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = threading.Thread(target=_serve, name="gptoss-lab-sandbox-spawner", daemon=True)
            _spawner.start()
    if die_with_parent:
        argv = ["setpriv", "--pdeathsig", "KILL", "--", *argv]
    reply: queue.Queue[Any] = queue.Queue()
    _requests.put((argv, kwargs, reply))
    got = reply.get()
    if isinstance(got, Exception):
        raise got
    return got  # type: ignore[no-any-return]


def _client_class() -> type:
    import zmq
    from jupyter_client import BlockingKernelClient

    class BoundedClient(BlockingKernelClient):
        """A kernel client whose sockets bound what they take in (size of a frame, messages queued)."""

        def _create_connected_socket(self, channel: str, identity: bytes | None = None) -> Any:
            url = self._make_url(channel)
            sock = self.context.socket({"iopub": zmq.SUB, "shell": zmq.DEALER, "control": zmq.DEALER,
                                        "stdin": zmq.DEALER, "hb": zmq.REQ}[channel])
            sock.linger = 0
            sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
            sock.setsockopt(zmq.RCVHWM, QUEUE_MESSAGES)
            if identity:
                sock.identity = identity
            if channel == "iopub":
                # ZMQ drops an oversized message by disconnecting (then reconnects): this says when.
                self.iopub_drops = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
            sock.connect(url)
            return sock

        def dropped(self) -> int:
            """How many times IOPub dropped the connection (an oversized message) since last asked."""
            monitor, n = getattr(self, "iopub_drops", None), 0
            while monitor is not None and monitor.poll(0):
                monitor.recv_multipart()
                n += 1
            return n

    return BoundedClient


@dataclass
class KernelPlan:
    """What every kernel of one sandbox gets."""

    tier: str
    work: WorkArea
    limits: dict[str, Any]
    memory_mb: int
    processes: int
    uid: int | None
    shares: dict[Path, str] = field(default_factory=dict)
    seccomp: bytes | None = None


class Kernel:
    """A kernel process and the client to it. ``ready`` is set once it answers (or failed: ``error``)."""

    def __init__(self, plan: KernelPlan):
        self.plan = plan
        self.n = next(_ids)
        self.ready = threading.Event()
        self.error: SandboxError | None = None
        self.client: Any = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.group: SandboxGroup | None = None
        self._namespace: str | None = None
        self.sockets = plan.work.new_socket_dir()
        self.killed_for: str | None = None  # set by the watchdog: why it killed the kernel

    # -- start ----------------------------------------------------------------------------------

    def start(self, background: bool) -> None:
        plan = self.plan
        key = secrets.token_hex(32)
        host_ip = str(plan.work.host(self.sockets) / "k")
        inside_ip = host_ip if plan.tier == "process" else f"{SOCKET_DIR}/k"
        conn = {"transport": "ipc", "ip": inside_ip, "shell_port": 1, "iopub_port": 2, "stdin_port": 3,
                "control_port": 4, "hb_port": 5, "key": key, "signature_scheme": "hmac-sha256", "kernel_name": ""}
        spec = dict(plan.limits, connection=conn, max_message_bytes=MAX_MESSAGE_BYTES,
                    connection_file=str(plan.work.private / f"kernel-{self.n}.json") if plan.tier == "process"
                    else "/tmp/gptoss-kernel.json")
        if plan.tier == "process":
            spec["parent_pid"] = os.getpid()
        launcher = [sys.executable, "-I", "-c", LAUNCHER]
        pass_fds: tuple[int, ...] = ()
        if plan.tier == "process":
            argv, cwd, env = launcher, str(plan.work.data_host), sandbox_env(plan.tier, str(plan.work.data_host))
        else:
            layout = Layout(plan.work.data, self.sockets, plan.shares)
            if plan.seccomp is not None:
                fd = os.memfd_create("gptoss-seccomp", 0)
                os.write(fd, plan.seccomp)
                os.lseek(fd, 0, os.SEEK_SET)
                layout.seccomp_fd, pass_fds = fd, (fd,)
            argv = plan.work.enter() + bwrap_argv(plan.tier, layout, plan.memory_mb * 2**20, launcher)
            cwd, env = None, {}
        if plan.tier != "process" or os.getuid() == 0:
            self.group = SandboxGroup(f"gptoss-sandbox-{os.getpid()}-{self.n}", plan.memory_mb * 2**20, plan.processes)
            if self.group.procs_files:
                script = 'for f in $GROUPS_; do echo $$ > "$f" || exit 97; done; exec "$@"'
                argv = ["/bin/sh", "-c", script.replace("$GROUPS_", " ".join(self.group.procs_files)), "sh", *argv]
        try:
            self.proc = spawn(argv, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, start_new_session=True, pass_fds=pass_fds)
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps(spec).encode())
            self.proc.stdin.close()
        except (OSError, BrokenPipeError) as e:
            self.error = SandboxError(f"the sandbox kernel could not be launched: {e}")
            self.ready.set()
            return
        finally:
            for fd in pass_fds:
                os.close(fd)
        parent_conn = dict(conn, ip=host_ip)
        if background:
            threading.Thread(target=self._connect, args=(parent_conn,), name="gptoss-lab-sandbox-connect",
                             daemon=True).start()
        else:
            self._connect(parent_conn)

    def _connect(self, conn: dict[str, Any]) -> None:
        client = None
        try:
            client = _client_class()()
            client.load_connection_info(conn)
            client.start_channels(stdin=False, hb=False)
            deadline = time.monotonic() + 60
            while True:
                try:
                    client.wait_for_ready(timeout=2)
                    break
                except RuntimeError:
                    if self.dead() is not None or time.monotonic() > deadline:
                        raise
            self.client = client
        except BaseException as e:
            if client is not None:
                try:
                    client.stop_channels()
                except Exception:
                    pass
            why = self.dead()
            err = self._stderr() if why is not None else ""
            self.error = SandboxError(f"the sandbox kernel did not start ({why or e}) {err}".strip())
        finally:
            self.ready.set()

    def _stderr(self) -> str:
        proc = self.proc
        if proc is None or proc.stderr is None:
            return ""
        try:
            return proc.stderr.read(65536).decode(errors="replace")[-2000:]
        except (OSError, ValueError):
            return ""

    # -- while it runs --------------------------------------------------------------------------

    def interrupt(self) -> None:
        """Ask the kernel to interrupt its code (from the thread that reads it: sockets are not shared)."""
        client = self.client
        if client is not None:
            client.control_channel.send(client.session.msg("interrupt_request", content={}))

    def dead(self) -> str | None:
        """Why the kernel process is gone, or None while it lives."""
        if self.proc is None:
            return "not running"
        code = self.proc.poll()
        if code is None:
            return None
        if self.killed_for is not None:
            return self.killed_for
        if self.group is not None and self.group.oom_killed():
            return f"killed for using more than {self.plan.memory_mb} MB of memory"
        if code > 128:
            code = -(code - 128)
        if code < 0:
            try:
                return f"killed by signal {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exited with status {code}"

    def namespace(self) -> str | None:
        """The kernel's PID namespace (bwrap tiers): the init bwrap made, found as the outer bwrap's child."""
        if self._namespace is None and self.proc is not None and self.plan.tier != "process":
            mine = pid_namespace(os.getpid())
            for pid in _children(self.proc.pid):
                ns = pid_namespace(pid)
                if ns is not None and ns != mine:
                    self._namespace = ns
        return self._namespace

    def processes(self) -> list[int]:
        """Every process of this kernel start (the process tier: the kernel and its descendants)."""
        if self.proc is None:
            return []
        ns = self.namespace()
        if ns is not None:
            return processes_in(ns)
        return [self.proc.pid, *_descendants(self.proc.pid)] if self.plan.tier == "process" else []

    def cpu_seconds(self) -> float:
        """CPU time used by everything this kernel start ran (a cgroup's count, else /proc's)."""
        got = self.group.cpu_seconds() if self.group is not None else None
        return got if got is not None else cpu_seconds_of(self.processes())

    def strays(self) -> list[int]:
        """Processes besides the kernel and the namespace's init: what the code left running."""
        out = []
        for pid in self.processes():
            if _zombie(pid):
                continue  # dead already, waiting for its parent to read its status
            inner = _inner_pid(pid)
            if inner is not None and inner > 2:
                out.append(pid)
            elif inner is None and self.proc is not None and pid != self.proc.pid:  # the process tier
                out.append(pid)
        return out

    def terminate_for(self, reason: str) -> None:
        """Kill the kernel from any thread (its sockets are left to the thread that reads them)."""
        self.killed_for = reason
        proc = self.proc
        if proc is not None and proc.poll() is None:
            kill_all(self.processes())
            _signal_group(proc.pid, signal.SIGKILL)

    def kill_strays(self) -> int:
        found = self.strays()
        for _ in range(5):  # a fork loop makes new ones while the last are killed
            if not found:
                break
            kill_all(found)
            time.sleep(0.02)
            found = self.strays()
        return len(found)

    # -- the end ----------------------------------------------------------------------------------

    def shutdown(self, *, polite: bool) -> None:
        """Stop the kernel and everything it started: a shutdown request (when ``polite``, from the
        thread that owns the sockets), then SIGTERM, then SIGKILL, a second apart."""
        proc = self.proc
        if polite and self.client is not None and proc is not None and proc.poll() is None:
            try:
                self.client.control_channel.send(self.client.session.msg("shutdown_request", content={"restart": False}))
                proc.wait(timeout=1.0)
            except Exception:
                pass
        if proc is not None and proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        if self.client is not None:
            try:
                self.client.stop_channels()
                monitor = getattr(self.client, "iopub_drops", None)
                if monitor is not None:
                    monitor.close(linger=0)
            except Exception:
                pass
            self.client = None
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGKILL)  # bwrap, and with it everything in its namespace
                kill_all(processes_in(self._namespace) if self._namespace else [])
            proc.wait(timeout=10)
            if proc.stderr:
                proc.stderr.close()
        if self.group is not None:
            self.group.remove()
        self.plan.work.drop_socket_dir(self.sockets)
        self.ready.set()


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2] in "ZX"
    except (OSError, ValueError, IndexError):
        return True


def _children(pid: int) -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit() and _ppid(int(d)) == pid]


def _descendants(pid: int) -> list[int]:
    parents = {int(d): _ppid(int(d)) for d in os.listdir("/proc") if d.isdigit()}
    out: list[int] = []
    frontier = {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier}
        out.extend(frontier)
    return out


def _inner_pid(pid: int) -> int | None:
    """The pid a process has inside its PID namespace (None outside any)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                ids = line.split()[1:]
                return int(ids[-1]) if len(ids) > 1 else None
    except (OSError, ValueError):
        pass
    return None
