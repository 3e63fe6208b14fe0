"""Denial of service against the user, from code a model could write: the parent's memory, the disk,
CPU across processes, restarts, malformed messages, links out of shared folders, and the ownership
of the user's folders after the parent is killed. Every attack runs for real in the sandbox."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gptoss_lab.tools.sandbox import Sandbox
from gptoss_lab.tools.sandbox.leases import UID_BASE, UID_SPAN

REPO = Path(__file__).resolve().parent.parent


def parent_script(tmp_path: Path, body: str) -> dict:
    """Run ``body`` in a fresh parent process that owns a Sandbox ``s``; it prints one JSON line."""
    script = tmp_path / "parent.py"
    script.write_text(f"import json, resource, sys, time\nsys.path.insert(0, {str(REPO)!r})\n"
                      + "from gptoss_lab.tools.sandbox import Sandbox\n" + textwrap.dedent(body))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def sb():
    s = Sandbox(timeout=5, memory_mb=512, disk_mb=32, files=500, cpu_seconds=30)
    yield s
    s.close()


# -- the parent's memory ----------------------------------------------------------------------------

FLOOD = '''
import threading, time
k = get_ipython().kernel
def flood():
    s, parent = k.session, k.get_parent()
    big = s.serialize(s.msg("stream", {"name": "stdout", "text": "x" * (48 * 2**20)}, parent=parent))
    for _ in range(40):  # 2 GB, straight onto the IOPub socket, past every limit of the kernel's own
        k.iopub_socket.send_multipart(big)
    for _ in range(20000):
        print("y" * 100000, flush=True)
threading.Thread(target=flood, daemon=True).start()
'''


def test_the_parents_memory_stays_bounded_whatever_the_kernel_sends(tmp_path):
    got = parent_script(tmp_path, f"""
        import threading, traceback
        def rss():
            return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS:')).split()[1]) // 1024
        peak = {{"mb": 0, "where": ""}}
        def sample():  # the resident size, and what the parent was doing at its highest
            main = threading.main_thread().ident
            while True:
                now = rss()
                if now > peak["mb"]:
                    peak["mb"] = now
                    peak["where"] = "".join(traceback.format_stack(sys._current_frames()[main])[-4:])
                time.sleep(0.02)
        s = Sandbox(timeout=20, memory_mb=1024)
        s.run("1")
        before = rss()
        threading.Thread(target=sample, daemon=True).start()
        first = s.run({FLOOD!r})  # returns at once; the flood goes on after it
        time.sleep(8)
        r = s.run("print('still answering')", timeout=20)
        again = s.run("print('still answering')", timeout=20) if r.restarted else r
        time.sleep(0.1)
        s.close()
        print(json.dumps({{"before": before, "peak": peak["mb"], "where": peak["where"], "text": r.text,
                           "again": again.text}}))
    """)
    assert got["peak"] - got["before"] < 300, got  # a few hundred MB at most, never the 2 GB sent
    # the flooded kernel either still answers, or is found out and restarted, and says so
    assert "still answering" in got["text"] or "restarted" in got["text"], got
    assert got["again"] == "still answering\n", got


def test_a_huge_print_after_memory_pressure_returns_a_tool_message(sb):
    r = sb.run("b = bytearray(10**10)")
    assert r.error and r.error.startswith("MemoryError")
    r = sb.run("print('z' * (50 * 2**20))")
    assert r.text and len(r.text) < 30_000 and ("not sent" in r.text or "characters cut" in r.text)
    assert sb.run("print('ok')").text == "ok\n"


# -- the disk -------------------------------------------------------------------------------------


def test_the_work_dir_is_size_and_inode_limited(sb):
    before = os.statvfs("/tmp")
    r = sb.run("n = 0\ntry:\n    while True:\n        open(f'big{n}', 'wb').write(b'x' * 2**20)\n        n += 1\n"
               "except OSError as e:\n    print(n, e.errno)", timeout=60)
    n, err = map(int, r.text.split())
    assert err == 28 and n <= 32  # ENOSPC at disk_mb
    assert sum(f.stat().st_size for f in sb.workdir.iterdir()) <= 32 * 2**20
    r = sb.run("import os\nfor f in os.listdir('.'):\n    os.remove(f)\nn = 0\ntry:\n    while True:\n"
               "        open(f'e{n}', 'w').close()\n        n += 1\nexcept OSError as e:\n    print(n, e.errno)", timeout=60)
    n, err = map(int, r.text.split())
    assert err == 28 and n < 500  # the inodes ran out, not the host's
    after = os.statvfs("/tmp")
    assert (before.f_bfree - after.f_bfree) * before.f_frsize < 8 * 2**20  # the host disk did not fill
    assert "tmpfs of 32 MB and 500 files" in str(sb.report)
    assert "up to 32 MB and 500 files" in __import__("gptoss_lab.tools.python_tool", fromlist=["x"]).PythonTool(
        sandbox=sb).declaration_text()
    # a full work dir does not stop a restart: the sockets live elsewhere
    r = sb.run("import os\nos._exit(3)")
    assert r.restarted
    assert sb.run("print('up again')").text == "up again\n"
    sb.run("import os\nfor f in os.listdir('.'):\n    os.remove(f)")


# -- CPU ------------------------------------------------------------------------------------------

RESPAWN = '''
import subprocess, sys
code = "import subprocess, sys, time\\nend = time.time() + 0.5\\nwhile time.time() < end: pass\\n" \\
       "subprocess.Popen([sys.executable, '-c', sys.argv[1], sys.argv[1]], start_new_session=True)"
for _ in range(2):
    subprocess.Popen([sys.executable, "-c", code, code], start_new_session=True)
print("started")
'''


def test_cpu_is_bounded_for_the_whole_sandbox_across_respawning_processes():
    with Sandbox(timeout=10, cpu_seconds=6, memory_mb=512) as s:
        r = s.run(RESPAWN)
        assert r.text.strip() == "started"
        t0 = time.monotonic()
        deadline = t0 + 40
        while time.monotonic() < deadline and s._kernel is not None and s._kernel.killed_for is None:
            time.sleep(0.2)
        assert s._kernel is not None and s._kernel.killed_for is not None, "the budget was never enforced"
        used = s._kernel.cpu_seconds() if s._kernel.proc is not None else None
        assert time.monotonic() - t0 < 30
        r = s.run("print('fresh')")
        assert "CPU budget of 6 s" in r.text and "fresh" in r.text and r.restarted
        assert used is None or used < 6 + 3
        time.sleep(1.0)
        assert s._kernel.cpu_seconds() < 2  # nothing of the old one is left spinning


def test_a_thread_that_swallows_the_interrupt_does_not_run_on_after_a_timeout():
    with Sandbox(timeout=1, memory_mb=512) as s:
        s.run("kept = 1")
        r = s.run("import threading\ndef spin():\n    while True:\n        try:\n            while True: pass\n"
                  "        except KeyboardInterrupt:\n            pass\nthreading.Thread(target=spin, daemon=True).start()\n"
                  "import time\ntime.sleep(30)")
        # the main thread may take the interrupt (then the spinning thread is found out) or not: either
        # way the kernel is restarted, says so, and nothing of it spins on
        assert r.timed_out and r.restarted and "state" in r.text and "lost" in r.text
        time.sleep(0.5)
        before = s._kernel.cpu_seconds()
        time.sleep(1.0)
        assert s._kernel.cpu_seconds() - before < 0.3  # no thread of the old kernel spinning


def test_processes_left_running_after_a_timeout_are_killed():
    with Sandbox(timeout=1, memory_mb=512) as s:
        r = s.run("import subprocess, time\np = subprocess.Popen(['sleep', '600'])\ntime.sleep(30)")
        assert r.timed_out
        assert s._kernel.strays() == []


# -- restarts and the parent's own folders --------------------------------------------------------


def test_planted_files_cannot_break_restarts(sb):
    code = textwrap.dedent("""
        import os
        for n in range(1, 40):
            for where in ('/run/kernel', '/mnt/data', '/tmp'):
                try:
                    os.makedirs(f'{where}/kernel-{n}.json', exist_ok=True)
                except OSError:
                    pass
        print(sorted(os.listdir('/run')))
    """)
    r = sb.run(code)
    assert "kernel" in r.text
    for _ in range(3):
        r = sb.run("import os\nos._exit(1)")
        assert r.restarted
        assert sb.run("print('alive')").text == "alive\n"
    r = sb.run(f"import os\nprint(os.path.exists({str(sb._work.private)!r}))")
    assert r.text.strip() == "False"  # the parent's connection files are out of its reach
    sb.run("import shutil, os\nfor f in os.listdir('.'):\n    shutil.rmtree(f, ignore_errors=True)")


def test_malformed_and_undecodable_messages_do_not_abort_the_run(sb):
    code = textwrap.dedent("""
        k = get_ipython().kernel
        s, parent = k.session, k.get_parent()
        for kind, content in [("status", {}), ("stream", {"name": "stdout"}), ("error", {"ename": "X"}),
                              ("display_data", {"data": "not a dict"}), ("execute_result", {"data": {1: 2}})]:
            s.send(k.iopub_socket, kind, content, parent=parent)
        frames = s.serialize(s.msg("stream", {}, parent=parent))
        k.iopub_socket.send_multipart(frames[:3] + [b"{not json", b"{}", b"[]"])  # unsigned, undecodable
        k.iopub_socket.send_multipart([b"<IDS|MSG>", b"bad", b"garbage"])
        print("sent")
    """)
    r = sb.run(code)
    assert "sent" in r.text and "could not be read" in r.text and r.error is None
    assert sb.run("1 + 1").text == "2\n"


def test_links_out_of_the_work_dir_and_rw_shares_are_removed(tmp_path):
    rw = tmp_path / "writable"
    rw.mkdir()
    with Sandbox(share={rw: "rw"}, memory_mb=512) as s:
        r = s.run("import os\nos.symlink('/etc/passwd', '/mnt/user/writable/passwd')\n"
                  "os.symlink('/root', 'home')\nos.symlink('kept.txt', 'inside')\nopen('kept.txt', 'w').write('x')")
        assert "removed 2 links" in r.text
        assert not (rw / "passwd").is_symlink() and not (s.workdir / "home").is_symlink()
        assert (s.workdir / "inside").is_symlink()  # a link within the folder stays


def test_sandbox_uids_never_collide_and_are_no_account(tmp_path, root):
    import pwd

    holder = subprocess.Popen([sys.executable, "-c", f"import sys, time; sys.path.insert(0, {str(REPO)!r})\n"
                               "from gptoss_lab.tools.sandbox import Sandbox\ns = Sandbox(warm=False)\n"
                               "print(s.uid, flush=True)\ntime.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        theirs = int(holder.stdout.readline())
        boxes = [Sandbox(warm=False) for _ in range(3)]
        uids = [b.uid for b in boxes] + [theirs]
        assert len(set(uids)) == 4
        for uid in uids:
            assert UID_BASE <= uid < UID_BASE + UID_SPAN and not (61184 <= uid <= 65519)
            with pytest.raises(KeyError):
                pwd.getpwuid(uid)
        for b in boxes:
            b.close()
    finally:
        holder.kill()
        holder.wait()


def test_shared_folders_get_their_owner_back_after_the_parent_is_killed(tmp_path, root):
    share = tmp_path / "mine"
    share.mkdir()
    os.chown(share, 1234, 1234)
    os.chmod(share, 0o750)
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from gptoss_lab.tools.sandbox import Sandbox
        s = Sandbox(share={{{str(share)!r}: "rw"}})
        s.run("open('/mnt/user/mine/made.txt', 'w').write('by the sandbox')")
        print(s.uid, s._work.private, flush=True)
        time.sleep(600)
    """))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    uid_text, private = parent.stdout.readline().split()
    assert share.stat().st_uid == int(uid_text)  # lent to the sandbox while it runs
    parent.send_signal(signal.SIGKILL)  # no cleanup at all
    parent.wait()
    Sandbox(warm=False).close()  # the next sandbox to start gives the folder back
    assert (share.stat().st_uid, share.stat().st_gid, share.stat().st_mode & 0o777) == (1234, 1234, 0o750)
    assert (share / "made.txt").stat().st_uid == 1234 and (share / "made.txt").read_text() == "by the sandbox"
    assert private not in Path("/proc/mounts").read_text()  # its tmpfs mounts were taken down too


def test_the_report_names_every_layer(sb):
    layers = sb.report.layers
    for key in ("namespaces", "uid", "user namespaces", "seccomp", "memory", "cpu", "processes", "work dir",
                "from the kernel"):
        assert key in layers, key
    r = sb.run("import subprocess\nprint(subprocess.run(['unshare', '-Urm', 'true']).returncode)")
    assert "1" in r.text.split() and "Operation not permitted" in r.text  # no user namespaces inside


def test_a_work_dir_of_the_users_is_limited_too_and_gets_the_files_back(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "input.csv").write_text("a,b\n1,2\n")
    with Sandbox(workdir=mine, disk_mb=8, files=50, memory_mb=512) as s:
        assert s.workdir == mine.resolve()
        r = s.run("print(open('input.csv').read().splitlines()[1])\nn = 0\ntry:\n    while True:\n"
                  "        open(f'out{n}.bin', 'wb').write(b'x' * 2**20)\n        n += 1\nexcept OSError as e:\n"
                  "    print(n, e.errno)\nimport os\nos.symlink('/etc/passwd', 'pw')", timeout=30)
        first, counts = r.text.split("\n")[:2]
        n, err = map(int, counts.split())
        assert first == "1,2" and err == 28 and n <= 8
        assert "copied to" in s.report.layers["work dir"]
        # what the code made is in the user's folder after the run, bounded, and no link came with it
        assert sum(f.stat().st_size for f in mine.iterdir()) <= 9 * 2**20
        assert (mine / "out0.bin").stat().st_size == 2**20 and not (mine / "pw").exists()
        assert all(f.stat().st_uid == mine.stat().st_uid for f in mine.iterdir())
    assert (mine / "input.csv").read_text() == "a,b\n1,2\n"
