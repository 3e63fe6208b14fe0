"""Exercises the sandbox's non-root tier (``bwrap+userns``) for real, as whoever runs it, and prints
what it saw as one JSON line (after ``PROBE-RESULT ``).

Run by tests/test_sandbox_unprivileged.py: as the user ``nobody`` (with an interpreter of its own)
when the tests run as root, else directly. ``python unprivileged_probe.py REPO PORT``: REPO is the
repository (put first on sys.path), PORT a TCP server on 127.0.0.1 that the sandbox must not reach.
Once it has printed its result (the sandbox is closed by then) it waits for EOF on stdin: the test
looks for leftovers of the closed sandbox while the process that used it still lives (as a
notebook's kernel would), then again once it has exited.

Every step is caught on its own: a failure is recorded in ``errors`` and the next step still runs.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import textwrap
import threading
import time
import traceback
from pathlib import Path

REPO = Path(sys.argv[1])
PORT = int(sys.argv[2])
sys.path.insert(0, str(REPO))

from gptoss_lab.tools.sandbox import Sandbox  # noqa: E402

SECRET_VAR = "GPTOSS_LAB_TEST_SECRET"
HOME = Path(os.environ["HOME"])
NAMESPACES = ("pid", "mnt", "user", "net", "ipc", "uts")

doc: dict = {"pid": os.getpid(), "uid": os.getuid(), "errors": {}, "runs": {},
             "python_prefixes": sorted({sys.prefix, sys.base_prefix})}


def stat_of(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time in clock ticks) of a process, None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[19])


def alive(pid: int, start: int) -> bool:
    """Whether that process still runs (a zombie has ended: it only waits to be reaped)."""
    got = stat_of(pid)
    return got is not None and got[2] == start and got[0] not in "ZX"


def ns_links(pid: int | str) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for ns in NAMESPACES:
        try:
            out[ns] = os.readlink(f"/proc/{pid}/ns/{ns}")
        except OSError:
            out[ns] = None
    return out


class Tracker:
    """Everything this process started, sampled from /proc every 50 ms: pid, start time, namespaces."""

    def __init__(self) -> None:
        self.seen: dict[tuple[int, int], dict] = {}
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def sample(self) -> None:
        parents: dict[int, int] = {}
        starts: dict[int, int] = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                got = stat_of(int(d))
                if got is not None and got[0] not in "ZX":
                    parents[int(d)], starts[int(d)] = got[1], got[2]
        mine, frontier = set(), {os.getpid()}
        while frontier:
            frontier = {p for p, pp in parents.items() if pp in frontier and p not in mine}
            mine |= frontier
        with self.lock:
            for pid in mine:
                key = (pid, starts[pid])
                if key not in self.seen:
                    try:
                        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                    except OSError:
                        cmd = b"?"
                    self.seen[key] = {"pid": pid, "start": starts[pid], "ns": ns_links(pid),
                                      "cmd": cmd[:300].decode("utf-8", "replace")}

    def _loop(self) -> None:
        while not self.stop.wait(0.05):
            try:
                self.sample()
            except Exception:
                pass

    def result(self) -> list[dict]:
        self.stop.set()
        self.thread.join()
        return list(self.seen.values())


def step(name: str):
    def wrap(fn):
        t = time.monotonic()
        try:
            fn()
        except Exception:
            doc["errors"][name] = traceback.format_exc()
        doc.setdefault("seconds", {})[name] = round(time.monotonic() - t, 2)
        return fn

    return wrap


def run(sb: Sandbox, name: str, code: str, **kw) -> dict:
    """Run code, keep what came back (the last line parsed as JSON when it is some)."""
    r = sb.run(textwrap.dedent(code), **kw)
    lines = r.text.strip().splitlines()
    parsed = None
    if lines:
        try:
            parsed = json.loads(lines[-1])
        except ValueError:
            pass
    got = {"text": r.text[-3000:], "error": r.error, "restarted": r.restarted, "timed_out": r.timed_out,
           "seconds": round(r.seconds, 2), "json": parsed}
    doc["runs"][name] = got
    return got


# -- the run -------------------------------------------------------------------------------------

tracker = Tracker()
doc["own_ns"] = ns_links("self")
(HOME / "home-secret.txt").write_text("the user's own file")
os.environ[SECRET_VAR] = os.environ.get(SECRET_VAR) or "gptoss-lab-probe-secret"  # before the Sandbox exists
SECRET = os.environ[SECRET_VAR]

t0 = time.monotonic()
sb = Sandbox(disk_mb=8, files=100, timeout=30)
sb.wait_ready()
doc["ready_seconds"] = round(time.monotonic() - t0, 2)
doc["isolation"] = sb.isolation
doc["report"] = sb.report.as_dict()
doc["workdir"] = str(sb.workdir)
holder = re.match(r"/proc/(\d+)/root/", str(sb.workdir))
doc["holder"] = None
if holder is not None:
    hpid = int(holder.group(1))
    doc["holder"] = {"pid": hpid, "start": (stat_of(hpid) or ("?", 0, 0))[2], "ns": ns_links(hpid)}
    try:
        doc["holder"]["mounts"] = [line for line in Path(f"/proc/{hpid}/mountinfo").read_text().splitlines()
                                   if "gptoss-sandbox" in line]
    except OSError as e:
        doc["holder"]["mounts"] = [f"unreadable: {e}"]


@step("state")
def _state():
    run(sb, "state_set", "x = 41")
    run(sb, "state_get", "x + 1")


@step("network")
def _network():
    # The control: this process (outside the sandbox) reaches the server; the sandbox must not.
    with socket.create_connection(("127.0.0.1", PORT), timeout=5) as s:
        s.sendall(b"probe-control\n")
    run(sb, "network", f"""
        import json, socket
        try:
            with socket.create_connection(("127.0.0.1", {PORT}), timeout=3) as s:
                s.sendall(b"from-the-sandbox\\n")
            got = "connected"
        except OSError as e:
            got = f"{{type(e).__name__}}: {{e}}"
        print(json.dumps(got))
        """)


@step("environment")
def _environment():
    run(sb, "environment", f"""
        import glob, json, os
        found = []
        for p in glob.glob("/proc/*/environ"):
            try:
                found.append(open(p, "rb").read())
            except OSError:
                pass
        print(json.dumps({{"var": {SECRET_VAR!r} in os.environ,
                          "value": any({SECRET!r}.encode() in f for f in found)
                                   or {SECRET!r} in str(os.environ),
                          "environ_files": len(found), "names": sorted(os.environ)}}))
        """)


@step("files")
def _files():
    readable = {"home": str(HOME), "home file": str(HOME / "home-secret.txt"), "repository": str(REPO),
                "README.md": str(REPO / "README.md")}
    writable = {"home": str(HOME / "written-by-sandbox"), "repository": str(REPO / "written-by-sandbox"),
                "/": "/written-by-sandbox", "/etc": "/etc/written-by-sandbox",
                "/usr": "/usr/written-by-sandbox",
                "/var": "/var/written-by-sandbox", "/mnt": "/mnt/written-by-sandbox",
                "/run": "/run/written-by-sandbox", "python": f"{sys.prefix}/written-by-sandbox",
                # the controls: the two places it may write
                "/mnt/data": "/mnt/data/written-by-sandbox", "/tmp": "/tmp/written-by-sandbox"}
    doc["files_asked"] = {"readable": readable, "writable": writable}
    run(sb, "files", f"""
        import json, os
        read, wrote = {{}}, {{}}
        for what, path in {readable!r}.items():
            try:
                read[what] = os.listdir(path) if os.path.isdir(path) else open(path).read()[:80]
            except OSError as e:
                read[what] = f"{{type(e).__name__}}: {{e.strerror}}"
            if not os.path.exists(path):
                read[what] = "absent: " + str(read[what])
        for what, path in {writable!r}.items():
            try:
                with open(path, "w") as f:
                    f.write("x")
                wrote[what] = "written"
            except OSError as e:
                wrote[what] = f"{{type(e).__name__}}: {{e.strerror}}"
        print(json.dumps({{"read": read, "write": wrote}}))
        """)
    doc["home_after"] = sorted(os.listdir(HOME))
    # Outside /mnt/data: how big the sandbox's root is, and whether more than the work dir's 8 MB fit.
    run(sb, "root fs", """
        import json, os
        st = os.statvfs("/")
        n, err = 0, None
        try:
            for i in range(16):
                with open(f"/var/fill{i}", "wb") as f:
                    f.write(b"\\1" * 2**20)
                n += 1
        except OSError as e:
            err = e.strerror
        for i in range(n):
            os.remove(f"/var/fill{i}")
        print(json.dumps({"size_mb": st.f_blocks * st.f_frsize >> 20,
                          "read_only": bool(st.f_flag & os.ST_RDONLY), "mb_written_in_var": n, "error": err}))
        """)


@step("work dir limits")
def _limits():
    run(sb, "disk", """
        import json, os
        n, err = 0, None
        try:
            for i in range(64):
                with open(f"/mnt/data/big{i}", "wb") as f:
                    f.write(b"\\1" * 2**20)
                n += 1
        except OSError as e:
            err = e.errno
        for name in os.listdir("/mnt/data"):
            os.remove(os.path.join("/mnt/data", name))
        print(json.dumps({"written": n, "errno": err}))
        """)
    run(sb, "inodes", """
        import json, os
        n, err = 0, None
        try:
            for i in range(1000):
                open(f"/mnt/data/empty{i}", "w").close()
                n += 1
        except OSError as e:
            err = e.errno
        for name in os.listdir("/mnt/data"):
            os.remove(os.path.join("/mnt/data", name))
        print(json.dumps({"created": n, "errno": err}))
        """)
    # What it wrote is gone, and the work dir works again.
    run(sb, "after limits", "open('/mnt/data/small', 'w').write('ok')\nprint(open('/mnt/data/small').read())")


@step("unshare")
def _unshare():
    run(sb, "unshare", """
        import json, subprocess
        p = subprocess.run(["unshare", "-Urm", "true"], capture_output=True, text=True)
        print(json.dumps({"rc": p.returncode, "stderr": p.stderr.strip()}))
        """)


@step("interrupt")
def _interrupt():
    stamp: dict[str, float] = {}

    def stopper():
        time.sleep(1.5)
        stamp["interrupt"] = time.monotonic()
        sb.interrupt()

    t = threading.Thread(target=stopper)
    t.start()
    got = run(sb, "interrupt", "import time\ntime.sleep(25)\nprint('slept', 'through')")
    stamp["returned"] = time.monotonic()
    t.join()
    got["after_interrupt_s"] = round(stamp["returned"] - stamp["interrupt"], 2)
    run(sb, "after interrupt", "x")


@step("crash")
def _crash():
    run(sb, "crash", "import os\nos._exit(1)")
    run(sb, "after crash", "1 + 1")
    doc["restarts"] = sb.restarts


@step("close")
def _close():
    private = sb._work.private if hasattr(sb, "_work") else None
    t = time.monotonic()
    sb.close()
    doc["close_seconds"] = round(time.monotonic() - t, 2)
    time.sleep(0.2)  # what close() killed has had a moment to exit
    with tracker.lock:
        started = list(tracker.seen.values())
    doc["after_close"] = {
        "workdir_exists": os.path.exists(doc["workdir"]),
        "private_exists": None if private is None else os.path.exists(private),
        "tmpdir": sorted(os.listdir(os.environ.get("TMPDIR", "/tmp"))) if os.environ.get("TMPDIR") else None,
        "holder_alive": doc["holder"] is not None and alive(doc["holder"]["pid"], doc["holder"]["start"]),
        "children": [info for info in started if alive(info["pid"], info["start"])],
    }


tracker.sample()  # once more before it stops: anything started last is seen too
doc["seen"] = tracker.result()
print("PROBE-RESULT " + json.dumps(doc), flush=True)
sys.stdin.read()  # the test looks for leftovers now
