"""The python tool's sandbox, run for real (bubblewrap, a sibling ipykernel), with an escape suite:
everything here is code a model could write."""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from gptoss_lab.tools.python_tool import PythonTool
from gptoss_lab.tools.sandbox import Sandbox, SandboxUnavailableError

SECRET = "gptoss-lab-test-secret-7f3a"


def uid_processes(uid: int) -> list[int]:
    """Living processes of ``uid`` (zombies are dead: they only wait for a parent to read their status)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                status = dict(line.split(":", 1) for line in (d / "status").read_text().splitlines() if ":" in line)
                if int(status["Uid"].split()[0]) == uid and not status["State"].strip().startswith(("Z", "X")):
                    out.append(int(d.name))
            except (OSError, ValueError, KeyError):
                pass
    return out


def gone(uid: int, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while uid_processes(uid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return uid_processes(uid) == []


@pytest.fixture(scope="module")
def sb():
    os.environ["GPTOSS_LAB_TEST_SECRET"] = SECRET  # in the parent's environment while the sandbox starts
    s = Sandbox(timeout=5, memory_mb=512, file_mb=1)
    yield s
    s.close()
    os.environ.pop("GPTOSS_LAB_TEST_SECRET", None)


def test_isolation_is_named(sb):
    assert sb.isolation == ("bwrap+uid" if os.getuid() == 0 else "bwrap+userns")


def test_state_is_kept_between_calls(sb):
    assert sb.run("x = 41").text == ""
    assert sb.run("x + 1").text == "42\n"


def test_text_holds_stdout_stderr_result_and_traceback_in_order(sb):
    r = sb.run("import sys\nprint('one')\nprint('two', file=sys.stderr)\nsys.stdout.flush()\n1/0")
    assert r.text.index("one") < r.text.index("two") < r.text.index("ZeroDivisionError")
    assert r.error == "ZeroDivisionError: division by zero"
    assert "\x1b[" not in r.text  # no terminal colours for the model
    r = sb.run("print('before')\n'result'")
    assert r.text == "before\n'result'\n"


def test_rich_outputs_for_display(sb):
    code = textwrap.dedent(
        """
        import base64
        from IPython.display import HTML, Image, display
        png = base64.b64decode('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==')
        display(Image(data=png))
        display(HTML('<b>bold</b>'))
        """
    )
    r = sb.run(code)
    kinds = [sorted(o) for o in r.outputs]
    assert any("image/png" in k for k in kinds) and any("text/html" in k for k in kinds)
    assert "[image]" in r.text


def test_no_network_loopback_included(sb):
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(SECRET.encode())

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        r = sb.run(f"import urllib.request\nurllib.request.urlopen('http://127.0.0.1:{port}/', timeout=3).read()")
        assert r.error and SECRET not in r.text and hits == []
        r = sb.run("import socket\ns = socket.create_connection(('1.1.1.1', 53), timeout=3)")
        assert r.error and ("unreachable" in r.text or "Errno" in r.text)
        r = sb.run("import socket\nsocket.getaddrinfo('pypi.org', 443)")
        assert r.error and "gaierror" in r.text
    finally:
        server.shutdown()


def test_parent_environment_is_invisible(sb):
    r = sb.run("import os\nprint(sorted(os.environ))\nprint(os.environ.get('GPTOSS_LAB_TEST_SECRET'))")
    assert "GPTOSS_LAB_TEST_SECRET" not in r.text and SECRET not in r.text
    r = sb.run("import glob\nfound = []\nfor p in glob.glob('/proc/*/environ'):\n    try:\n        found.append(open(p, 'rb').read())\n    except OSError:\n        pass\nprint(any(b'" + SECRET + "' in f for f in found))")
    assert r.text.strip() == "False"


def test_the_users_files_are_unreadable(sb, tmp_path):
    host_secret = Path("/tmp") / f"gptoss-host-secret-{os.getpid()}"
    host_secret.write_text(SECRET)
    notebook_folder = Path.cwd()
    try:
        checks = {
            "home": os.path.expanduser("~"),
            "notebook folder": str(notebook_folder / "README.md"),
            "temp file": str(host_secret),
            "pytest tmp": str(tmp_path),
        }
        for what, path in checks.items():
            r = sb.run(f"import os\nprint(os.path.exists({path!r}) and os.listdir({path!r}) if os.path.isdir({path!r}) else os.path.exists({path!r}))")
            assert r.text.strip() in ("False", "[]", "['.pyenv']"), (what, r.text)
        # Nowhere a user's data could be: only the python installation is bound under /root and /work.
        r = sb.run(
            "import subprocess\nprint(subprocess.run(['grep', '-rl', '" + SECRET + "', '/mnt', '/tmp', '/home', '/etc',"
            " '/var', '/dev/shm', '-s'], capture_output=True, text=True).stdout)",
            timeout=60,
        )
        assert r.text.strip() == ""
    finally:
        host_secret.unlink()


def test_writes_only_in_its_working_directory(sb):
    for path in ("/usr/gptoss-escape", f"{sys.prefix}/gptoss-escape", "/etc/gptoss-escape", "/gptoss-escape"):
        r = sb.run(f"open({path!r}, 'w').write('x')")
        assert r.error and ("Read-only" in r.text or "Permission denied" in r.text or "No such file" in r.text), path
        assert not Path(path).exists()
    r = sb.run("open('/tmp/gptoss-escape', 'w').write('x')")  # a private /tmp, gone with the sandbox
    assert not r.error and not Path("/tmp/gptoss-escape").exists()
    r = sb.run("open('notes.txt', 'w').write('kept')\nimport os\nprint(os.getcwd())")
    assert r.text.strip() == "/mnt/data"
    assert (sb.workdir / "notes.txt").read_text() == "kept"


def test_file_size_is_bounded(sb):
    r = sb.run("open('big.bin', 'wb').write(b'x' * (3 * 2**20))")  # file_mb=1
    assert r.error and "File too large" in r.text
    assert sb.run("1 + 1").text == "2\n"


def test_the_parent_process_is_untouchable(sb):
    r = sb.run(f"import os, signal\nos.kill({os.getpid()}, signal.SIGKILL)")
    assert r.error and "ProcessLookupError" in r.text
    r = sb.run("import os\nprint(len([p for p in os.listdir('/proc') if p.isdigit()]) < 10)")
    assert r.text.strip() == "True"  # it sees only its own few processes
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        sb.run("import os, signal\nos.kill(-1, signal.SIGKILL)")  # everything it may signal: nothing of ours
        time.sleep(0.2)
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
    assert sb.run("'alive'").text == "'alive'\n"


def test_memory_bomb(sb):
    r = sb.run("b = bytearray(10**10)")
    assert r.error.startswith("MemoryError") and not r.restarted
    r = sb.run("chunks = []\nwhile True:\n    chunks.append(b'x' * (64 * 2**20))")
    assert r.restarted or (r.error or "").startswith("MemoryError")
    if r.restarted:
        assert "512 MB" in r.text and "state" in r.text
    assert sb.run("2 + 2").text == "4\n"


def test_process_bomb(sb):
    r = sb.run("import subprocess\nps = []\nfor i in range(500):\n    ps.append(subprocess.Popen(['sleep', '30']))")
    assert r.error and ("Resource temporarily unavailable" in r.text or "BlockingIOError" in r.text)
    if sb.uid is not None:
        assert len(uid_processes(sb.uid)) <= sb.processes
    sb.run("for p in ps:\n    p.kill()\n    p.wait()")


def test_fork_bomb_is_bounded_and_cleaned_up():
    with Sandbox(timeout=3, processes=40) as s:
        r = s.run("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass")
        assert r.timed_out
        if s.uid is not None:
            assert len(uid_processes(s.uid)) <= 40
        uid = s.uid
    if uid is not None:
        assert gone(uid)


def test_infinite_loop_is_interrupted_and_state_kept(sb):
    sb.run("kept = 'yes'")
    r = sb.run("while True:\n    pass", timeout=2)
    assert r.timed_out and "KeyboardInterrupt" in r.text and not r.restarted
    assert sb.run("kept").text == "'yes'\n"


def test_code_that_ignores_interrupts_gets_a_restart(sb):
    r = sb.run("import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass", timeout=1)
    assert r.timed_out and r.restarted and "restarted" in r.text
    assert sb.run("'fresh'").text == "'fresh'\n"


def test_output_flood_is_capped_head_and_tail(sb):
    r = sb.run("print('START' + 'x' * 1_000_000 + 'END')")
    assert len(r.text) < 21_000
    assert r.text.startswith("START") and r.text.rstrip().endswith("END")
    assert "characters cut" in r.text


def test_segfault_restarts_and_says_state_was_lost(sb):
    sb.run("precious = 1")
    r = sb.run("import ctypes\nctypes.string_at(0)")
    assert r.restarted and "SIGSEGV" in r.text and "state" in r.text
    assert "NameError" in sb.run("precious").text
    assert sb.run("3 * 3").text == "9\n"


def test_shared_folders(tmp_path):
    ro, rw = tmp_path / "readonly", tmp_path / "writable"
    ro.mkdir()
    rw.mkdir()
    (ro / "data.csv").write_text("a,b\n1,2\n")
    with Sandbox(share={ro: "ro", rw: "rw"}) as s:
        assert s.run("print(open('/mnt/user/readonly/data.csv').read())").text == "a,b\n1,2\n\n"
        r = s.run("open('/mnt/user/readonly/new.txt', 'w').write('x')")
        assert r.error and "Read-only" in r.text
        assert not s.run("open('/mnt/user/writable/out.txt', 'w').write('done')").error
        assert (rw / "out.txt").read_text() == "done"
        tool = PythonTool(sandbox=s)
        text = tool.declaration_text()
        assert "'/mnt/user/readonly' (read-only)" in text and "'/mnt/user/writable' (read-write)" in text
    # The user's folder and what the sandbox wrote in it are the user's again.
    assert rw.stat().st_uid == os.getuid() and (rw / "out.txt").stat().st_uid == os.getuid()


def test_no_orphans_after_close():
    s = Sandbox()
    s.run("import subprocess, os\np = subprocess.Popen(['sleep', '1000'])\nif os.fork() == 0:\n    os.setsid()\n    os.execvp('sleep', ['sleep', '999'])")
    uid = s.uid
    if uid is not None:
        assert len(uid_processes(uid)) >= 2
    s.close()
    if uid is not None:
        assert gone(uid)
    assert not s.workdir.exists()


def test_no_orphans_when_the_parent_kernel_dies(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(
        """
        import sys, time
        from gptoss_lab.tools.sandbox import Sandbox
        s = Sandbox()
        s.run("import subprocess; subprocess.Popen(['sleep', '1000'])")
        print(s.uid, flush=True)
        time.sleep(1000)
        """
    ))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    uid = int(parent.stdout.readline())
    assert len(uid_processes(uid)) >= 2
    parent.send_signal(signal.SIGKILL)  # the parent kernel dies without any cleanup
    parent.wait()
    deadline = time.monotonic() + 5
    while uid_processes(uid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert uid_processes(uid) == []


def test_warm_kernel_is_started_ahead():
    with Sandbox() as s:
        t0 = time.monotonic()
        s.wait_ready(10)  # ready before the first call is asked for
        assert time.monotonic() - t0 < 10
        assert s.run("1 + 1").text == "2\n"


def test_without_bubblewrap_it_refuses_unless_told(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on this PATH
    with pytest.raises(SandboxUnavailableError, match="bubblewrap is not installed.*isolation='process'"):
        Sandbox()
    monkeypatch.setenv("PATH", os.defpath)
    with Sandbox(isolation="process") as s:  # an explicit, named, weaker tier
        assert s.isolation == "process"
        assert s.run("6 * 7").text == "42\n"


def test_the_environment_can_choose_the_weaker_tier_and_the_report_says_so(monkeypatch, tmp_path):
    # binder/start sets GPTOSS_LAB_ISOLATION=process in a container where bubblewrap cannot make namespaces
    monkeypatch.setenv("GPTOSS_LAB_ISOLATION", "process")
    mine = tmp_path / "mine.txt"
    mine.write_text("the user's file")
    with Sandbox() as s:
        assert s.isolation == "process"
        assert "NOT isolated" in str(s.report) and "chosen by GPTOSS_LAB_ISOLATION=process" in str(s.report)
        assert s.run(f"print(open({str(mine)!r}).read())").text == "the user's file\n"  # honestly: it sees it
    monkeypatch.setenv("GPTOSS_LAB_ISOLATION", "none")
    with pytest.raises(ValueError, match="'auto' or 'process'"):
        Sandbox()


def test_python_tool_declaration_tells_the_truth(sb):
    tool = PythonTool(sandbox=sb)
    text = tool.declaration_text()
    assert "stateful Jupyter notebook" in text
    assert "time out after 5.0 seconds" in text
    assert "'/mnt/data'" in text and "Internet access for this session is disabled." in text
    assert tool.system_config().name == "python"


@pytest.mark.parametrize("isolation", ["auto", "process"])
def test_the_models_files_cannot_run_before_the_limits(isolation):
    # A module the model leaves in its working directory must not be imported by the next kernel's
    # launcher (which runs before the limits are set and the user is dropped).
    with Sandbox(isolation=isolation, memory_mb=512) as s:
        s.run("open('json.py', 'w').write('import resource\\nresource.setrlimit = lambda *a: None\\n"
              "open(\"/tmp/gptoss-shadowed\", \"w\").write(\"x\")\\n')")
        r = s.run("import os\nos._exit(1)")
        assert r.restarted
        r = s.run("import resource\nprint(resource.getrlimit(resource.RLIMIT_AS)[0] == (512 + 1024) * 2**20)")
        assert r.text.strip() == "True"
        assert not Path("/tmp/gptoss-shadowed").exists()


def test_rich_outputs_are_bounded(sb):
    r = sb.run("from IPython.display import HTML, display\nfor i in range(80):\n    display(HTML('x' * 1000))")
    assert len(r.outputs) == 50 and "rich outputs not kept" in r.text


def test_an_interrupt_from_another_thread_stops_the_run(sb):
    threading.Timer(1.0, sb.interrupt).start()
    t0 = time.monotonic()
    r = sb.run("import time\nwhile True:\n    time.sleep(0.01)", timeout=30)
    assert time.monotonic() - t0 < 5 and r.error == "interrupted" and not r.timed_out
    assert "interrupted" in r.text and sb.run("1").text == "1\n"


def test_process_tier_kernel_dies_with_its_parent(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(
        """
        import os, time
        from gptoss_lab.tools.sandbox import Sandbox
        s = Sandbox(isolation="process")
        print(s.run("import os; print(os.getpid())").text.strip(), flush=True)
        time.sleep(1000)
        """
    ))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    kernel_pid = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{kernel_pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not Path(f"/proc/{kernel_pid}").exists() or "zombie" in Path(f"/proc/{kernel_pid}/status").read_text()
