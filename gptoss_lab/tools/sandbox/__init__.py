"""The python tool's sandbox: a sibling ipykernel, driven with jupyter_client, never the user's kernel.

The strongest isolation this machine allows is chosen and named (``Sandbox.isolation``); what holds
is listed, layer by layer, in ``Sandbox.report``:

``bwrap+uid`` (as root)
    bubblewrap with new network, PID, IPC and UTS namespaces; only system folders, the Python
    installation, the work dir and the shares are visible; the environment is cleared; every
    capability dropped, a seccomp filter (no new namespaces, mounts, BPF, tracing, keyrings), and the
    kernel runs as a uid of its own, leased so that no two sandboxes share one and out of every real
    account's range; sockets over IPC (a new network namespace cannot reach loopback TCP).
``bwrap+userns`` (not root)
    the same in an unprivileged user namespace, as the user's own uid, with user namespaces
    disabled inside (``--disable-userns``).
``process`` (only when asked for: ``Sandbox(isolation="process")``, or ``GPTOSS_LAB_ISOLATION=process``
    in the environment, as binder/start sets it in a container that cannot make namespaces)
    a plain child process with the resource limits and a cleared environment. It is NOT isolated
    from your files or your network.

Limits. ``memory_mb``: resident memory with a cgroup where one is writable (past it the kernel is
killed and restarted, and the model told its state was lost), and the address space at
``memory_mb`` + 1 GiB with RLIMIT_AS everywhere (one huge allocation fails with MemoryError and the
kernel lives on). ``cpu_seconds``: CPU time of everything one kernel runs, all its processes
together (a cgroup's count, else its PID namespace read from /proc), and of each process
(RLIMIT_CPU). ``processes``: processes and threads (a pids cgroup, and RLIMIT_NPROC).
``file_mb``: the largest file (RLIMIT_FSIZE). ``disk_mb`` and ``files``: the work dir is a tmpfs of
that size and inode count. ``timeout``: the wall-clock time of one ``run()``: past it the code is
interrupted, and if it does not stop the kernel is restarted. What the parent reads from the kernel
is bounded too (see :mod:`.kernel`): the user's own kernel never holds more than a few hundred MB of it.

``run()`` never raises on anything the code does or the kernel sends: a crash, a flood, a message
that cannot be read, a full disk all come back as a :class:`RunResult` whose text says what happened.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .isolation import (
    DATA_DIR,
    ENV_ISOLATION,
    SHARE_DIR,
    SandboxError,
    SandboxUnavailableError,
    bwrap_works,
    choose_tier,
    limits,
    seccomp_program,
)
from .kernel import Kernel, KernelPlan
from .leases import UidLease
from .links import outward_links
from .report import SandboxReport, describe
from .run import Capped, Reader, RunResult, collect, drain
from .workarea import WorkArea

DEFAULT_TIMEOUT = 120.0  # seconds one run() may take
DEFAULT_DISK_MB = 256  # the work dir's tmpfs
DEFAULT_FILES = 10_000  # and its inodes
STOP_GRACE = 1.0  # seconds a stopped run may take to yield before its kernel is restarted
TIMEOUT_GRACE = 2.0  # the same after a timeout
WATCH_SECONDS = 0.25  # how often the CPU budget is checked, between runs too

__all__ = [
    "DATA_DIR", "DEFAULT_DISK_MB", "DEFAULT_FILES", "DEFAULT_TIMEOUT", "SHARE_DIR", "RunResult", "Sandbox", "SandboxError", "SandboxReport",
    "SandboxUnavailableError", "bwrap_works",
]


class Sandbox:
    """A stateful Python kernel that runs model-written code in isolation.

    Parameters
    ----------
    timeout
        Seconds one ``run()`` may take (wall clock) before it is interrupted.
    memory_mb, cpu_seconds, processes, file_mb, disk_mb, files
        Resource limits (see the module docstring for what each one bounds).
    share
        Folders of yours the code may read, at ``/mnt/user/<name>``: a list (read-only) or a mapping
        ``{path: "rw"}`` for write access. Links it makes in them that point outside are removed.
    workdir
        A folder of yours whose files the code finds in ``/mnt/data``, and where what it makes there is
        copied after each run (new and changed files; nothing of yours is deleted). ``/mnt/data`` itself
        is always the limited tmpfs where one can be mounted.
    isolation
        ``"auto"`` (the strongest available; refuses to run unsandboxed) or ``"process"`` (no
        isolation from files or network: only resource limits; an explicit choice). ``None``: the
        environment's ``GPTOSS_LAB_ISOLATION``, else ``"auto"``.
    max_output_chars
        The most text the model reads from one run (head and tail kept).
    warm
        Start the kernel now, in the background, so that the first ``run()`` is fast.
    spare
        Keep a second kernel started, so that a restart (after a crash, a stop, a timeout) is instant.
        It costs one idle kernel (~50 MB resident).
    """

    def __init__(
        self,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        memory_mb: int = 2048,
        cpu_seconds: int = 600,
        processes: int = 64,
        file_mb: int = 256,
        disk_mb: int = DEFAULT_DISK_MB,
        files: int = DEFAULT_FILES,
        share: Iterable[str | os.PathLike[str]] | Mapping[str | os.PathLike[str], str] = (),
        workdir: str | os.PathLike[str] | None = None,
        isolation: str | None = None,
        max_output_chars: int = 20_000,
        warm: bool = True,
        spare: bool = True,
    ):
        self.timeout = timeout
        self.memory_mb, self.cpu_seconds, self.processes = memory_mb, cpu_seconds, processes
        self.file_mb, self.disk_mb, self.files = file_mb, disk_mb, files
        self.max_output_chars = max_output_chars
        self.spare = spare
        items = share.items() if isinstance(share, Mapping) else ((s, "ro") for s in share)
        self.shares = {Path(p).resolve(): mode for p, mode in items}
        for p, mode in self.shares.items():
            if mode not in ("ro", "rw") or not p.is_dir():
                raise ValueError(f"share: {p} must be an existing folder, shared 'ro' or 'rw' (got {mode!r})")
        names = [p.name for p in self.shares]
        if len(set(names)) != len(names):
            raise ValueError(f"share: two folders have the same name, and would meet at {SHARE_DIR}/<name>: {names}")
        env = os.environ.get(ENV_ISOLATION)
        self.chosen_by = "argument" if isolation is not None else ENV_ISOLATION if env else "default"
        self.isolation = choose_tier(isolation or env or "auto")  # before anything is made: a refusal leaves nothing
        self.closed = False
        self.restarts = 0
        self._lock = threading.Lock()  # one run at a time
        self._interrupt_at = 0.0
        self._kernel: Kernel | None = None
        self._spare: Kernel | None = None
        self._lease = UidLease.acquire() if self.isolation == "bwrap+uid" else None
        self.uid = self._lease.uid if self._lease is not None else None
        own = None if workdir is None else Path(workdir).resolve()
        if own is not None:
            own.mkdir(parents=True, exist_ok=True)
        self._work = WorkArea(self.isolation, disk_mb, files, own, self._lease)
        self.workdir = self._work.user_folder
        if self._lease is not None:
            if own is not None and self._work.mirror is None:  # written directly: lent to the uid
                self._lease.lend(own)
                os.chmod(own, 0o711)  # bwrap, root without capabilities, must be able to enter it
            for p, mode in self.shares.items():
                if mode == "rw":
                    self._lease.lend(p)
        self._seccomp, self._seccomp_note = (None, "off: the process tier has no bubblewrap") \
            if self.isolation == "process" else seccomp_program()
        self._plan = KernelPlan(
            self.isolation, self._work, limits(memory_mb, cpu_seconds, processes, file_mb, self.uid),
            memory_mb, processes, self.uid, dict(self.shares), self._seccomp,
        )
        self._linked = {p for p, m in self.shares.items() if m == "rw"} | {self._work.data_host}
        self._watch_stop = threading.Event()
        threading.Thread(target=self._watch, name="gptoss-lab-sandbox-watch", daemon=True).start()
        if warm:
            self._kernel = self._new_kernel(background=True)

    # -- kernels --------------------------------------------------------------------------------

    def _new_kernel(self, background: bool) -> Kernel:
        k = Kernel(self._plan)
        k.start(background)
        return k

    def _current(self) -> Kernel:
        """The kernel to run in, started if need be."""
        if self._kernel is None:
            self._kernel = self._new_kernel(background=False)
        return self._kernel

    def _start_spare(self) -> None:
        """Once the kernel is ready, start the spare (never while a run is starting or restarting)."""
        kernel = self._kernel
        if not self.spare or self._spare is not None or kernel is None or not kernel.ready.is_set():
            return
        if self._lock.acquire(blocking=False):
            try:
                if self._spare is None and not self.closed:
                    self._spare = self._new_kernel(background=True)
            finally:
                self._lock.release()

    def _restart(self, kernel: Kernel) -> None:
        """Replace ``kernel`` (killed now) by the spare, or by a new one starting in the background."""
        kernel.kill()
        self.restarts += 1
        spare, self._spare = self._spare, None
        if spare is not None and spare.ready.is_set() and spare.error is None and spare.dead() is None:
            self._kernel = spare
        else:
            if spare is not None:
                spare.kill()
            self._kernel = self._new_kernel(background=True)

    def restart(self) -> None:
        """Kill the kernel and start a fresh one (its state is lost)."""
        if self.closed:
            raise SandboxError("this sandbox is closed")
        with self._lock:
            if self._kernel is not None:
                self._restart(self._kernel)
            self.wait_ready()

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the kernel answers; SandboxError if it cannot start."""
        kernel = self._current()
        if not kernel.ready.wait(timeout):
            raise SandboxError(f"the sandbox kernel was not ready after {timeout:.0f} s")
        if kernel.error is not None:
            raise kernel.error

    def _watch(self) -> None:
        # The CPU budget holds for everything the kernel started, between runs too: a child that
        # respawns itself or a thread that swallowed the interrupt is killed when it is spent.
        while not self._watch_stop.wait(WATCH_SECONDS):
            self._start_spare()
            kernel = self._kernel
            if kernel is None or kernel.killed_for is not None or not kernel.ready.is_set():
                continue
            try:
                used = kernel.cpu_seconds()
            except Exception:
                continue
            if used > self.cpu_seconds:
                kernel.terminate_for(f"killed for using its CPU budget of {self.cpu_seconds} s "
                                     "(all its processes together)")

    # -- report ---------------------------------------------------------------------------------

    @property
    def report(self) -> SandboxReport:
        """Every layer of isolation and every limit, and what holds of it here."""
        kernel = self._kernel
        groups = kernel.group.layers if kernel is not None and kernel.group is not None else {}
        return describe(self, groups)

    @property
    def disk_limit(self) -> str | None:
        """The work dir's limit in words for the tool's declaration (None: not limited)."""
        return None if self._work.limit else f"up to {self.disk_mb} MB and {self.files} files"

    # -- lifecycle --------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the kernels and everything they started; give lent folders back; remove the work area."""
        if self.closed:
            return
        self.closed = True
        self.interrupt()
        self._watch_stop.set()
        got = self._lock.acquire(timeout=5)  # let a run in progress end (it was just interrupted)
        try:
            for k in (self._kernel, self._spare):
                if k is not None:
                    k.shutdown(polite=got)
            self._kernel = self._spare = None
        finally:
            if got:
                self._lock.release()
        self._remove_outward_links()
        self._work.sync()
        self._work.close()  # its unmounts are written in the lease's journal: before the lease goes
        if self._lease is not None:
            self._lease.release()

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
        shared between threads). A run that starts after this call is not affected."""
        self._interrupt_at = time.monotonic()

    # -- running code -------------------------------------------------------------------------------

    def run(self, code: str, *, timeout: float | None = None) -> RunResult:
        """Run ``code`` in the kernel and collect what it printed, returned and displayed."""
        started = time.monotonic()
        if self.closed:
            raise SandboxError("this sandbox is closed")
        with self._lock:
            if self.closed:
                raise SandboxError("this sandbox is closed")
            kernel, note = self._ready_kernel()
            if kernel is None:
                return RunResult(f"[the sandbox could not start its kernel, so the code was not run: {note}]",
                                 error="sandbox failed", restarted=True, seconds=time.monotonic() - started)
            result = self._execute(kernel, code, self.timeout if timeout is None else timeout, started)
            links = self._remove_outward_links()
            self._work.sync()
            if links:
                result.text += f"\n[removed {len(links)} links pointing outside their folder: {', '.join(links[:5])}]"
            if note:
                result.text = note + "\n" + result.text
                result.restarted = True
            result.seconds = time.monotonic() - started
            return result

    def _ready_kernel(self) -> tuple[Kernel | None, str]:
        """A kernel that answers, after one restart if need be; else None and why."""
        note = ""
        for attempt in range(2):
            kernel = self._current()
            kernel.ready.wait(60)
            why = kernel.error or (None if kernel.ready.is_set() else "not ready after 60 s") or kernel.dead()
            if why is None and kernel.client is not None:
                return kernel, note
            if kernel.killed_for is not None:  # the watchdog ended it between runs: say so once
                note = f"[the kernel was {kernel.killed_for}; it was restarted and its state (variables, imports) was lost]"
            self._restart(kernel)
            if attempt == 1:
                return None, str(why)
        return None, "no kernel"

    def _execute(self, kernel: Kernel, code: str, timeout: float, started: float) -> RunResult:
        relay = kernel.client
        assert relay is not None
        drain(relay)
        msg_id = relay.send("shell", "execute_request", {"code": code, "silent": False, "store_history": False,
                                                         "user_expressions": {}, "allow_stdin": False,
                                                         "stop_on_error": True})
        reader = Reader(msg_id, self.max_output_chars)
        deadline = time.monotonic() + timeout
        state = {"at": 0.0, "user": False}

        def tick() -> None:
            now = time.monotonic()
            if not state["at"] and (now > deadline or self._interrupt_at > started):
                state["at"], state["user"] = now, now <= deadline
                kernel.interrupt()

        def stop() -> str | None:
            if kernel.dead() is not None:
                return "dead"
            if state["at"] and time.monotonic() - state["at"] > (STOP_GRACE if state["user"] else TIMEOUT_GRACE):
                return "stuck"
            return None

        why = collect(relay, reader, stop=stop, tick=tick)
        if why == "dead":
            reader.resets = 0  # the connection went with the kernel: no news
        text, notes = reader.text, reader.notes()
        if why == "relay":
            self._restart(kernel)
            return self._result(text, notes + ["the kernel sent more than the sandbox reads (its reader ran out of "
                                               "memory): it was restarted and its state (variables, imports) was lost"],
                                reader, error="kernel output too large", restarted=True)
        if why == "dead":
            reason = kernel.dead()
            self._restart(kernel)
            return self._result(text, notes + [f"the kernel died ({reason}); it was restarted and its state "
                                               "(variables, imports) was lost"], reader, error=f"kernel died: {reason}",
                                restarted=True)
        stopped = "was stopped" if state["user"] else f"timed out after {timeout:g} s"
        if why == "stuck":
            self._restart(kernel)
            return self._result(text, notes + [f"{stopped} and did not stop when interrupted: the kernel was restarted "
                                               "and its state (variables, imports) was lost"], reader,
                                error="interrupted" if state["user"] else "timeout", timed_out=not state["user"],
                                restarted=True)
        if why is None and (not reader.seen or (reader.resets and not reader.idle)):
            # The reply came, but not one message of this run on IOPub (not even its busy status): the
            # kernel's output is broken (its IOPub thread died, or a flood drowns it) and will stay so.
            self._restart(kernel)
            notes = [n for n in notes if "was reset" not in n]
            notes.append("the kernel's output channel failed (this run's output stopped arriving): it was "
                         "restarted and its state (variables, imports) was lost")
            return self._result(text, notes, reader, error="kernel output lost", restarted=True)
        if reader.flooded:
            self._restart(kernel)
            notes.append(f"the kernel flooded its output ({reader.foreign_bytes >> 20} MB from code left running, "
                         f"{reader.dropped} oversized messages dropped during this run): it was restarted and its "
                         "state (variables, imports) was lost")
            return self._result(text, notes, reader, error=reader.error, restarted=True)
        if not state["at"]:
            return self._result(text, notes, reader, error=reader.error)
        # Interrupted, and the kernel is idle again: whatever it left running (a thread that swallowed
        # the interrupt, a child process) must not go on using the machine.
        strays = kernel.kill_strays()
        if self._still_busy(kernel):
            self._restart(kernel)
            return self._result(text, notes + [f"{stopped}; code kept running after the interrupt (a thread or process "
                                               "that ignores it): the kernel was restarted and its state was lost"],
                                reader, error="interrupted" if state["user"] else "timeout",
                                timed_out=not state["user"], restarted=True)
        if strays:
            notes.append(f"{strays} processes it left running were killed")
        if state["user"]:
            return self._result(text, notes + ["interrupted: the run was stopped; the kernel's state is kept"],
                                reader, error="interrupted")
        return self._result(text, notes + [f"timed out after {timeout:g} s: interrupted; the kernel's state is kept"],
                            reader, error="timeout", timed_out=True)

    @staticmethod
    def _still_busy(kernel: Kernel) -> bool:
        before = kernel.cpu_seconds()
        time.sleep(0.3)
        return kernel.cpu_seconds() - before > 0.15  # half a core, with the kernel idle

    @staticmethod
    def _result(text: Capped, notes: list[str], reader: Reader, *, error: str | None, timed_out: bool = False,
                restarted: bool = False) -> RunResult:
        for n in notes:
            text.add(f"\n[{n}]")
        return RunResult(text.value(), reader.outputs, timed_out=timed_out, error=error, restarted=restarted)

    def _remove_outward_links(self) -> list[str]:
        out = []
        for folder in self._linked:
            out += outward_links(folder, remove=True)
        return out
