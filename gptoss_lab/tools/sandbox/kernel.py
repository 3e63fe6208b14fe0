"""One sandbox kernel's life: start, connect, interrupt, and a shutdown that escalates (a shutdown
request, then SIGTERM, then SIGKILL), with what it sends bounded before the user's kernel sees it.

The parent never holds a ZMQ socket to the kernel: a relay process of its own (``_relay.py``, under
a memory limit) reads the kernel's sockets and writes the parent one bounded JSON line per message of
the request being run, counts for the rest. Whatever the code in the kernel sends, and whenever it
sends it (after ``run()`` returned too), the user's kernel holds at most a few lines of it; a relay
that runs out of memory dies, and the kernel is restarted. The connection spec lives in no folder the
sandbox can reach; the sockets in a fresh folder per start, on a tmpfs of their own.
"""

from __future__ import annotations

import json
import os
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
from .isolation import SOCKET_DIR, Layout, SandboxError, bwrap_argv, sandbox_env
from .relay import Relay
from .run import MAX_MESSAGE_BYTES
from .spawn import spawn
from .workarea import WorkArea

LAUNCHER = (Path(__file__).with_name("_launcher.py")).read_text()
_ids = iter(range(1, 1 << 30))

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
        self.client: Relay | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.group: SandboxGroup | None = None
        self._namespace: str | None = None
        self.sockets = plan.work.new_socket_dir()
        self.killed_for: str | None = None  # set by the watchdog: why it killed the kernel
        self._drain: threading.Thread | None = None
        self._err_tail = b""

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
        launcher = [os.path.abspath(sys.executable), "-I", "-c", LAUNCHER]  # a relative path breaks in bwrap's cwd
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
            assert self.proc.stdin is not None and self.proc.stderr is not None
            self._drain = threading.Thread(target=self._drain_stderr, args=(self.proc.stderr,),
                                           name="gptoss-lab-sandbox-stderr", daemon=True)
            self._drain.start()
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
        """Ready once the kernel answers kernel_info on shell AND its IOPub reaches us (its busy status
        for that request): a subscription still joining would lose the first run's output."""
        try:
            relay = Relay(conn)
            deadline = time.monotonic() + 60
            while True:
                asked = relay.send("shell", "kernel_info_request")
                replied = published = False
                until = time.monotonic() + 1.0
                while time.monotonic() < until and not (replied and published):
                    doc = relay.read(0.1)
                    if doc is None:
                        continue
                    if doc.get("relay") == "dead":
                        raise SandboxError("its reader stopped")
                    if doc.get("parent") == asked:
                        replied = replied or doc.get("msg_type") == "kernel_info_reply"
                        published = published or doc.get("channel") == "iopub"
                if replied and published:
                    break
                why = self.dead()
                if why is not None or time.monotonic() > deadline:
                    raise SandboxError(why or "no answer after 60 s")
            self.client = relay
        except BaseException as e:
            why = self.dead()
            err = self._stderr() if why is not None else ""
            if "relay" in locals():
                relay.close()
            self.error = SandboxError(f"the sandbox kernel did not start ({why or e}) {err}".strip())
        finally:
            self.ready.set()

    def _stderr(self) -> str:
        for _ in range(20):  # what it said before it died: the drain has it once the pipe closed
            if self._drain is None or not self._drain.is_alive():
                break
            time.sleep(0.05)
        return self._err_tail.decode(errors="replace")[-2000:]

    def _drain_stderr(self, pipe: Any) -> None:
        # Read as it comes, keeping a tail: a kernel (or code in it) writing fd 2 must never block on a
        # full pipe, and the parent keeps no more than a few KB of it.
        try:
            while True:
                chunk = pipe.read1(65536)
                if not chunk:
                    break
                self._err_tail = (self._err_tail + chunk)[-4096:]
        except (OSError, ValueError):
            pass
        finally:
            pipe.close()  # here, not in kill(): a process of the sandbox may hold the pipe open a moment longer

    # -- while it runs --------------------------------------------------------------------------

    def interrupt(self) -> None:
        """Ask the kernel to interrupt its code (from the thread that runs it)."""
        if self.client is not None:
            self.client.send("control", "interrupt_request")

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
                self.client.send("control", "shutdown_request", {"restart": False})
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
            self.client.close()
            self.client = None
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGKILL)  # bwrap, and with it everything in its namespace
                kill_all(processes_in(self._namespace) if self._namespace else [])
            proc.wait(timeout=10)
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
