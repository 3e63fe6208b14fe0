"""Hostile code a model could write, run for real in the sandbox (no mocks): the network, secrets,
the user's files, the parent, memory, processes, time, output floods, crashes and orphans. Each test
asserts what a user would notice: nothing leaks, nothing of theirs changes, and ``run()`` always comes
back (within its timeout and a few seconds) with a RunResult whose text says what happened. Written for
the bwrap+uid tier (as root, as CI runs it): the process checks look for the sandbox's own uid in /proc.

Tests with a ``# FOUND`` comment are regression tests of real defects this suite found in the sandbox
while it was being hardened (issue 11), all fixed since: the comment says what broke."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from gptoss_lab.tools.sandbox import RunResult, Sandbox

REPO = Path(__file__).resolve().parent.parent
SECRET = "gptoss-hostile-secret-5d1c9e"
TIMEOUT = 3
GRACE = 4.5  # seconds past its timeout a run may take: the interrupt's grace, a restart, the checks


def uid_processes(uid: int) -> list[int]:
    """Every process (not zombie) whose real uid is ``uid``, read from /proc."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                status = (d / "status").read_text()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            zombie = fields.get("State", "").strip().startswith("Z")
            if int(fields.get("Uid", "-1 0").split()[0]) == uid and not zombie:
                out.append(int(d.name))
    return out


def wait_gone(uid: int, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while uid_processes(uid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return uid_processes(uid)


def lines(r: RunResult) -> list[str]:
    return r.text.strip().splitlines()


def json_out(r: RunResult) -> Any:
    """The last line the code printed, as JSON."""
    assert r.error is None, r.text
    return json.loads(lines(r)[-1])


@pytest.fixture(scope="module")
def sb():
    os.environ["GPTOSS_HOSTILE_SECRET"] = SECRET  # in the parent's environment while its kernels start
    s = Sandbox(timeout=TIMEOUT, memory_mb=512, file_mb=8)
    s.wait_ready()
    yield s
    uid = s.uid
    s.close()
    os.environ.pop("GPTOSS_HOSTILE_SECRET", None)
    assert wait_gone(uid, 2) == [], "processes of the sandbox's uid survived close()"


# -- the network ---------------------------------------------------------------------------------------

# Every link name and address the kernel's netlink route dump shows (RTM_GETLINK, RTM_GETADDR).
NETLINK = textwrap.dedent("""
    import json, socket, struct

    def dump(kind):
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
        body = struct.pack('=BxHiII', 0, 0, 0, 0, 0) if kind == 18 else struct.pack('=BBBBi', 0, 0, 0, 0, 0)
        s.send(struct.pack('=LHHLL', 16 + len(body), kind, 0x301, 1, 0) + body)  # NLM_F_REQUEST | NLM_F_DUMP
        found, done = [], False
        while not done:
            data, off = s.recv(1 << 16), 0
            while off + 16 <= len(data):
                length, mtype = struct.unpack_from('=LH', data, off)
                if mtype in (2, 3) or length < 16:  # NLMSG_ERROR, NLMSG_DONE
                    done = True
                    break
                a = off + 16 + (16 if kind == 18 else 8)
                while a + 4 <= off + length:
                    alen, atype = struct.unpack_from('=HH', data, a)
                    if alen < 4:
                        break
                    val = data[a + 4:a + alen]
                    if kind == 18 and atype == 3:  # IFLA_IFNAME
                        found.append(val.rstrip(b'\\0').decode())
                    if kind == 22 and atype in (1, 2):  # IFA_ADDRESS, IFA_LOCAL
                        fam = socket.AF_INET if len(val) == 4 else socket.AF_INET6
                        found.append(socket.inet_ntop(fam, val))
                    a += (alen + 3) & ~3
                off += (length + 3) & ~3
        s.close()
        return sorted(set(found))

    names = [n for _, n in socket.if_nameindex()]
    print(json.dumps({'links': dump(18), 'addrs': dump(22), 'if_nameindex': names}))
""")


def tcp_attempts(targets: list[tuple[str, int]]) -> str:
    return textwrap.dedent(f"""
        import json, socket
        out = {{}}
        for host, port in {targets!r}:
            try:
                s = socket.create_connection((host, port), timeout=2)
                s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')
                out[f'{{host}}:{{port}}'] = 'connected: ' + s.recv(100).decode(errors='replace')
            except OSError as e:
                out[f'{{host}}:{{port}}'] = type(e).__name__
        print(json.dumps(out))
    """)


@pytest.fixture(scope="module")
def host_server():
    """A TCP server of the host's on every address (loopback included) that counts who reached it."""
    hits: list[str] = []
    servers = []
    for family, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            srv = socket.socket(family, socket.SOCK_STREAM)
            srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            srv.bind((addr, 0 if not servers else servers[0].getsockname()[1]))
            srv.listen(8)
            servers.append(srv)
        except OSError:
            pass

    def serve(srv: socket.socket) -> None:
        while True:
            try:
                conn, peer = srv.accept()
            except OSError:
                return
            hits.append(str(peer))
            conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n" + SECRET.encode())
            conn.close()

    for srv in servers:
        threading.Thread(target=serve, args=(srv,), daemon=True).start()
    yield servers[0].getsockname()[1], hits
    for srv in servers:
        srv.close()


def host_addresses() -> dict:
    out = subprocess.run([sys.executable, "-c", NETLINK], capture_output=True, text=True, timeout=30)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_loopback_and_host_addresses_are_unreachable(sb, host_server):
    port, hits = host_server
    # a quick self-check: the server answers the host
    with socket.create_connection(("127.0.0.1", port), timeout=2) as c:
        c.sendall(b"x")
        assert SECRET.encode() in c.recv(100)
    hits.clear()
    host_ips = [a for a in host_addresses()["addrs"] if not a.startswith(("127.", "::1", "fe80:"))]
    hosts = ["127.0.0.1", "localhost", "::1", "0.0.0.0", "127.0.1.1", *host_ips]
    targets = [(h, port) for h in hosts]
    r = sb.run(tcp_attempts(targets), timeout=10)
    got = json_out(r)
    assert all(not v.startswith("connected") for v in got.values()), got
    assert SECRET not in r.text and hits == []
    r = sb.run(f"import urllib.request\nurllib.request.urlopen('http://127.0.0.1:{port}/', timeout=2).read()")
    assert r.error and "URLError" in r.error and SECRET not in r.text and hits == []


def test_external_ips_and_dns_fail_at_once(sb):
    t0 = time.monotonic()
    r = sb.run(tcp_attempts([("1.1.1.1", 443), ("8.8.8.8", 53), ("2606:4700:4700::1111", 443)]), timeout=10)
    got = json_out(r)
    assert all(not v.startswith("connected") for v in got.values()), got
    r = sb.run(textwrap.dedent("""
        import socket
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            query = b'\\x12\\x34\\x01\\x00\\x00\\x01' + b'\\x00' * 6 + b'\\x03www\\x00\\x00\\x01\\x00\\x01'
            u.sendto(query, ('8.8.8.8', 53))
            print('sent')
        except OSError as e:
            print(e.errno)
        for name in ('pypi.org', 'example.com', 'localhost.localdomain'):
            try:
                socket.getaddrinfo(name, 443)
                print('resolved', name)
            except socket.gaierror:
                print('gaierror')
        import os
        print(os.path.exists('/etc/resolv.conf'), os.path.exists('/etc/hosts'))
    """))
    assert lines(r) == ["101", "gaierror", "gaierror", "gaierror", "False False"], r.text  # 101: ENETUNREACH
    assert time.monotonic() - t0 < 8  # nothing hangs waiting for a network that is not there


def test_raw_and_packet_sockets_are_refused(sb):
    r = sb.run(textwrap.dedent("""
        import socket
        for args in ((socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
                     (socket.AF_INET, socket.SOCK_RAW, 255),
                     (socket.AF_PACKET, socket.SOCK_RAW, 0x0300),
                     (socket.AF_INET6, socket.SOCK_RAW, 58)):
            try:
                socket.socket(*args)
                print('opened')
            except OSError as e:
                print(type(e).__name__)
    """))
    assert lines(r) == ["PermissionError"] * 4, r.text


def test_unix_sockets_of_the_host_are_unreachable(sb):
    path_srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    host_path = f"/tmp/gptoss-hostile-{os.getpid()}.sock"
    path_srv.bind(host_path)
    path_srv.listen(4)
    abstract = f"\0gptoss-hostile-{os.getpid()}"
    abs_srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abs_srv.bind(abstract)
    abs_srv.listen(4)
    try:
        wanted = {host_path, abstract, "/run/dbus/system_bus_socket", "/var/run/dbus/system_bus_socket",
                  "/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock",
                  "/run/systemd/private", "/run/systemd/journal/socket", "/run/user/0/bus",
                  "/run/postgresql/.s.PGSQL.5432", "/tmp/.X11-unix/X0"}
        for top in ("/run", "/var/run", "/tmp"):  # and every socket the host really has there
            for dirpath, dirs, files in os.walk(top):
                if dirpath.count("/") >= 4:
                    dirs.clear()  # deep enough: the sockets of services, and those of the sandboxes' kernels
                for f in files:
                    p = os.path.join(dirpath, f)
                    try:
                        if stat.S_ISSOCK(os.lstat(p).st_mode):
                            wanted.add(p)
                    except OSError:
                        pass
        r = sb.run(textwrap.dedent(f"""
            import json, socket
            out = {{}}
            for p in {sorted(wanted)!r}:
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    s = socket.socket(socket.AF_UNIX, kind)
                    try:
                        s.connect(p)
                        out[p] = 'connected'
                    except OSError as e:
                        out.setdefault(p, type(e).__name__)
                    s.close()
            print(json.dumps(out))
        """))
        got = json_out(r)
        assert set(got) == wanted and "connected" not in got.values(), got
        for srv in (path_srv, abs_srv):  # nobody knocked
            srv.setblocking(False)
            with pytest.raises(BlockingIOError):
                srv.accept()
    finally:
        path_srv.close()
        abs_srv.close()
        os.unlink(host_path)


def test_netlink_route_dumps_show_only_loopback(sb):
    host = host_addresses()
    r = sb.run(NETLINK)
    got = json_out(r)
    assert got["links"] == ["lo"] and got["if_nameindex"] == ["lo"], got
    assert set(got["addrs"]) <= {"127.0.0.1", "::1"}, got
    leaked = (set(host["links"]) - {"lo"}) & set(r.text.split('"'))
    theirs = [a for a in host["addrs"] if a not in ("127.0.0.1", "::1")]
    assert not leaked and not any(a in r.text for a in theirs), (host, got)
    r = sb.run("print(open('/proc/net/dev').read())\nprint(open('/proc/net/route').read())\n"
               "import os\nprint(os.path.exists('/sys/class/net'))")
    names = {line.split(":")[0].strip() for line in r.text.splitlines() if ":" in line}
    assert names == {"lo"} and r.text.rstrip().endswith("False"), r.text


# -- secrets ---------------------------------------------------------------------------------------------


def scan_proc(needle: str) -> str:
    return textwrap.dedent(f"""
        import json, os
        found, read, refused = [], 0, []
        pids = dict.fromkeys([p for p in os.listdir('/proc') if p.isdigit()] + ['self', '1', '{os.getpid()}'])
        for pid in pids:
            for what in ('environ', 'cmdline', 'comm', 'task/' + pid + '/environ'):
                try:
                    data = open(f'/proc/{{pid}}/{{what}}', 'rb').read()
                except OSError as e:
                    if pid == '1' and what == 'environ':
                        refused.append(type(e).__name__)
                    continue
                read += 1
                if {needle.encode()!r} in data:
                    found.append(f'{{pid}}/{{what}}')
        print(json.dumps({{'found': found, 'read': read, 'init_environ': refused,
                          'env': {needle!r} in repr(dict(os.environ))}}))
    """)


def test_the_parents_secrets_are_invisible(sb):
    # a process of the host's with the secret on its command line and in its environment
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", SECRET],
                             env={**os.environ, "OTHER_SECRET": SECRET})
    try:
        r = sb.run("import os\nprint(sorted(os.environ))")
        assert "GPTOSS_HOSTILE_SECRET" not in r.text and SECRET not in r.text
        got = json_out(sb.run(scan_proc(SECRET)))
        assert got["found"] == [] and not got["env"], got
        assert got["read"] > 0  # it did read its own
        assert got["init_environ"] == ["PermissionError"], got  # /proc/1 is bubblewrap's, not the code's
        r = sb.run(f"import os\nprint(os.path.exists('/proc/{os.getpid()}'), "
                   f"os.path.exists('/proc/{other.pid}'))")
        assert r.text.split() == ["False", "False"] or os.getpid() < 10, r.text
    finally:
        other.kill()
        other.wait()


def test_home_ssh_keys_the_notebook_folder_and_root_are_invisible(sb):
    home = Path.home()
    prefixes = [Path(sys.prefix), Path(sys.base_prefix)]

    def on_the_way(p: Path) -> bool:  # a folder bubblewrap had to make to reach the Python installation
        return any(p == q or p in q.parents for q in prefixes)

    tops = [t for t in (home, REPO, Path("/root")) if t.is_dir()]
    hidden = [str(p) for top in tops for p in top.iterdir() if not on_the_way(p)]
    hidden += [str(home / ".ssh" / n) for n in ("id_rsa", "id_ed25519", "authorized_keys", "known_hosts")]
    hidden += [str(REPO / ".git" / "config"), str(REPO / "pyproject.toml"), "/etc/passwd", "/etc/shadow",
               "/etc/sudoers", "/etc/hostname", "/etc/ssh", "/home", "/var", "/srv", "/opt", "/boot", "/sys"]
    assert len(hidden) > 10
    r = sb.run(f"import json, os\nprint(json.dumps([p for p in {hidden!r} if os.path.lexists(p)]))")
    assert json_out(r) == [], r.text
    allowed = {"usr", "bin", "sbin", "lib", "lib32", "lib64", "etc", "proc", "dev", "tmp", "run", "mnt"}
    allowed |= {p.parts[1] for p in prefixes}
    r = sb.run("import json, os\ntry:\n    etc = os.listdir('/etc')\nexcept OSError as e:\n"
               "    etc = [type(e).__name__]\nprint(json.dumps([sorted(os.listdir('/')), sorted(etc)]))")
    top, etc = json_out(r)
    assert set(top) <= allowed, top
    bound = {"ld.so.cache", "alternatives", "localtime", "ssl", "mime.types"}
    assert set(etc) <= bound | {"PermissionError"}, etc  # (bubblewrap makes /etc 0700: not even those)


def test_the_parents_kernel_keys_are_unreachable(sb):
    from jupyter_core.paths import jupyter_runtime_dir

    private = getattr(getattr(sb, "_work", None), "private", None)  # the parent's own folder of kernel files
    places = [jupyter_runtime_dir(), str(Path.home() / ".local/share/jupyter")]
    places += [str(private), str(private / "sock-1"), str(private / "data-mount")] if private else []
    r = sb.run(f"import os\nprint([p for p in {places!r} if os.path.lexists(p)])")
    assert r.text.strip() == "[]", r.text
    # Every kernel key the code can find anywhere it can read: its own (in its private /tmp), and no
    # other one (the spare kernel's, the relay's, the parent's) in a file, an environment, a command line.
    search = textwrap.dedent("""
        import glob, json, os, re
        own = json.load(open('/tmp/gptoss-kernel.json'))['key']
        keys, paths = set(), glob.glob('/proc/*/environ') + glob.glob('/proc/*/cmdline')
        for top in ('/tmp', '/run', '/mnt', '/dev/shm', '/etc'):  # (not /dev/fd: its pipes would block)
            for d, _, files in os.walk(top):
                paths += [os.path.join(d, f) for f in files]
        for p in paths:
            try:
                with open(p, 'rb') as f:
                    keys |= set(re.findall(rb'(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])', f.read(1 << 20)))
            except OSError:
                pass
        others = keys - {own.encode()}
        print(json.dumps({'own': own.encode() in keys, 'others': len(others), 'files': len(paths)}))
    """)
    deadline = time.monotonic() + 30  # with the spare kernel started: its key must stay out of reach too
    while getattr(sb, "_spare", None) is None and time.monotonic() < deadline:
        sb.run("1")
        time.sleep(0.2)
    got = json_out(sb.run(search, timeout=20))
    assert got["own"] and got["others"] == 0, got


def test_the_system_files_it_is_given_can_be_read(sb):
    # FOUND (fixed): isolation.bwrap_argv binds /etc/ld.so.cache,
    # /etc/alternatives, /etc/localtime, /etc/ssl/certs and /etc/mime.types with --ro-bind-try, but the
    # /etc that bubblewrap makes for them is 0700 root (the comment beside the prefixes says so: "bwrap
    # makes them 0700"; /etc gets no --perms 0755 --dir), and the kernel runs as another uid: none of
    # them can be read. A user notices: `subprocess.run(['awk', ...])` fails with "Permission denied"
    # (/usr/bin/awk -> /etc/alternatives/awk), time zone and MIME tables are missing. Nothing leaks.
    given = [p for p in ("/etc/ld.so.cache", "/etc/alternatives", "/etc/localtime", "/etc/ssl/certs",
                         "/etc/mime.types") if os.path.exists(p)]
    r = sb.run(f"import json, os\nprint(json.dumps([p for p in {given!r} if not os.access(p, os.R_OK)]))")
    assert json_out(r) == [], r.text


# -- the user's files -------------------------------------------------------------------------------------


def test_writes_outside_the_work_dir_and_tmp_fail(sb):
    venv_cfg = Path(sys.prefix) / "pyvenv.cfg"
    before = hashlib.sha256(venv_cfg.read_bytes()).hexdigest() if venv_cfg.exists() else None
    targets = ["/gptoss-x", "/usr/gptoss-x", "/usr/bin/gptoss-x", f"{sys.prefix}/gptoss-x",
               f"{sys.prefix}/bin/gptoss-x", f"{sys.base_prefix}/gptoss-x", "/etc/gptoss-x",
               str(REPO / "gptoss-x"), "/root/gptoss-x", "/run/gptoss-x", "/mnt/gptoss-x", "/dev/gptoss-x",
               "/proc/gptoss-x", "/proc/sys/kernel/hostname", "/proc/sysrq-trigger"]
    code = textwrap.dedent(f"""
        import json, os, sys
        out = {{}}
        for p in {targets!r}:
            try:
                with open(p, 'w') as f:
                    f.write('h')
                out[p] = 'written'
            except OSError as e:
                out[p] = type(e).__name__
        venv = sys.prefix
        for name, act in [('remove python', lambda: os.unlink(venv + '/bin/python')),
                          ('rename cfg', lambda: os.rename(venv + '/pyvenv.cfg', '/tmp/cfg')),
                          ('truncate cfg', lambda: os.truncate(venv + '/pyvenv.cfg', 0)),
                          ('utime cfg', lambda: os.utime(venv + '/pyvenv.cfg', (0, 0))),
                          ('chmod env', lambda: os.chmod('/usr/bin/env', 0o777)),
                          ('rmdir lib', lambda: os.rmdir(venv + '/lib')),
                          ('mkdir /usr', lambda: os.mkdir('/usr/gptoss-dir')),
                          ('symlink /usr', lambda: os.symlink('/tmp', '/usr/gptoss-link'))]:
            try:
                act()
                out[name] = 'done'
            except OSError as e:
                out[name] = type(e).__name__
        print(json.dumps(out))
    """)
    got = json_out(sb.run(code))
    assert "written" not in got.values() and "done" not in got.values(), got
    for p in targets:
        if p.endswith("gptoss-x"):
            assert not Path(p).exists(), p
    assert Path(sys.prefix, "bin", "python").exists() and not Path("/usr/gptoss-dir").exists()
    if before is not None:
        assert hashlib.sha256(venv_cfg.read_bytes()).hexdigest() == before
    # where it may write: its work dir and its private /tmp (not the host's)
    r = sb.run("open('/mnt/data/ok.txt', 'w').write('1')\n"
               "open('/tmp/gptoss-hostile-tmp', 'w').write('1')\nprint('ok')")
    assert r.text == "ok\n" and (sb.workdir / "ok.txt").exists()
    assert not Path("/tmp/gptoss-hostile-tmp").exists()


def test_hard_links_and_symlinks_do_not_reach_outside(sb):
    r = sb.run(textwrap.dedent(f"""
        import os, sys
        for src in ('/usr/bin/env', sys.prefix + '/pyvenv.cfg', '/etc/ld.so.cache'):
            for dst in ('/mnt/data/hl', '/tmp/hl'):
                try:
                    os.link(src, dst)
                    print('linked', src, dst)
                except OSError as e:
                    print(e.errno)
        os.symlink({str(REPO / 'README.md')!r}, 'readme')
        os.symlink('/etc/ld.so.cache', 'cache')
        try:
            print(open('readme').read()[:20])
        except OSError as e:
            print(type(e).__name__)
    """))
    # EXDEV: the work dir and /tmp are file systems of their own (or EACCES: /etc is closed to it)
    assert set(lines(r)[:6]) <= {"18", "13"} and "18" in lines(r)[:6] and "linked" not in r.text, r.text
    assert "FileNotFoundError" in r.text and "removed 2 links" in r.text
    assert not (sb.workdir / "readme").is_symlink() and not (sb.workdir / "cache").is_symlink()


def test_chmod_chown_and_setuid_tricks(sb):
    r = sb.run(textwrap.dedent("""
        import os
        open('mine', 'w').write('x')
        os.chmod('mine', 0o6777)
        out = []
        for name, act in [('chown root', lambda: os.chown('mine', 0, 0)),
                          ('chown other', lambda: os.chown('mine', 1000, 1000)),
                          ('setuid', lambda: os.setuid(0)), ('setgid', lambda: os.setgid(0)),
                          ('setgroups', lambda: os.setgroups([0])), ('seteuid', lambda: os.seteuid(0)),
                          ('chown /tmp', lambda: os.chown('/tmp', os.getuid(), os.getgid())),
                          ('chmod /usr', lambda: os.chmod('/usr', 0o777))]:
            try:
                act()
                out.append(name + ' done')
            except OSError as e:
                out.append(type(e).__name__)
        print(' '.join(out))
        status = dict(l.split(':', 1) for l in open('/proc/self/status').read().splitlines())
        print(status['CapEff'].strip(), status['CapPrm'].strip(), status['NoNewPrivs'].strip())
        mounts = [l.split() for l in open('/proc/self/mountinfo').read().splitlines()]
        print(all('nosuid' in m[5].split(',') for m in mounts), len(mounts))
    """))
    out = lines(r)
    assert "done" not in out[0] and set(out[0].split()) <= {"PermissionError", "OSError"}, r.text
    assert out[1] == "0000000000000000 0000000000000000 1", r.text  # no capability, no new privileges
    assert out[2].startswith("True "), r.text  # a setuid file it makes can never run setuid
    assert (sb.workdir / "mine").stat().st_uid == sb.uid


def test_setuid_files_in_a_users_work_dir_lose_their_bits_after_close(tmp_path):
    wd = tmp_path / "work"
    wd.mkdir(mode=0o750)
    with Sandbox(timeout=TIMEOUT, memory_mb=512, workdir=wd) as s:
        r = s.run(textwrap.dedent("""
            import os
            open('suid', 'w').write('#!/bin/sh\\nid\\n')
            os.chmod('suid', 0o6755)
            os.chmod('.', 0o777)
            print(oct(os.stat('suid').st_mode & 0o7777))
        """))
        assert r.text.strip() == "0o6755"
    st = (wd / "suid").stat()
    assert st.st_uid == os.getuid() and st.st_mode & 0o6000 == 0, oct(st.st_mode)  # not setuid the user
    assert (wd.stat().st_uid, wd.stat().st_mode & 0o777) == (os.getuid(), 0o750)


# -- the parent ------------------------------------------------------------------------------------------


def test_signals_to_the_parent_and_to_everyone(sb):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        r = sb.run(textwrap.dedent(f"""
            import os, signal
            out = []
            targets = [({os.getpid()}, signal.SIGKILL), ({sleeper.pid}, 9), (1, signal.SIGKILL),
                       (1, signal.SIGSTOP)]
            for pid, sig in targets:
                try:
                    os.kill(pid, sig)
                    out.append('sent')
                except OSError as e:
                    out.append(type(e).__name__)
            print(' '.join(out))
            try:
                os.kill(-1, signal.SIGKILL)  # everything it may signal (never itself): nothing of the host's
            except OSError:
                pass
            print('survived')
        """))
        out = lines(r)
        # the host's processes do not exist in there; its init is bubblewrap's, run as root
        assert out[0].split() == ["ProcessLookupError"] * 2 + ["PermissionError"] * 2, r.text
        assert out[-1] == "survived"
        time.sleep(0.2)
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()
    assert sb.run("'alive'").text == "'alive'\n"


def test_ptrace_and_the_memory_of_other_processes(sb):
    r = sb.run(textwrap.dedent("""
        import ctypes, os, subprocess
        libc = ctypes.CDLL(None, use_errno=True)
        child = subprocess.Popen(['sleep', '30'])
        out = []
        # PTRACE_ATTACH and _SEIZE to its init, ATTACH to its own child, TRACEME
        for req, pid in ((16, 1), (0x4206, 1), (16, child.pid), (0, 0)):
            out.append(f'{libc.ptrace(req, pid, 0, 0)}/{ctypes.get_errno()}')
        class iovec(ctypes.Structure):
            _fields_ = [('base', ctypes.c_void_p), ('len', ctypes.c_size_t)]
        buf = ctypes.create_string_buffer(16)
        local, remote = iovec(ctypes.addressof(buf), 16), iovec(0x400000, 16)
        got = libc.process_vm_readv(1, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
        out.append(f'{got}/{ctypes.get_errno()}')
        print(' '.join(out))
        for what in ('mem', 'environ', 'maps', 'root/', 'cwd/', 'fd/'):
            try:
                if what.endswith('/'):
                    os.listdir('/proc/1/' + what)
                else:
                    open('/proc/1/' + what, 'rb').read(1)
                print(what, 'read')
            except OSError as e:
                print(what, type(e).__name__)
        child.kill()
    """))
    out = lines(r)
    assert out[0] == " ".join(["-1/1"] * 5), r.text  # EPERM: seccomp refuses ptrace and process_vm_*
    assert all(line.endswith("PermissionError") for line in out[1:]), r.text


# -- memory ------------------------------------------------------------------------------------------------


GRADUAL_BOMB = "import time\nchunks = []\nwhile True:\n    chunks.append(b'x' * (8 * 2**20))\n" \
               "    time.sleep(0.005)"
TOUCHED_MMAP = "import mmap\nm = mmap.mmap(-1, 1200 * 2**20)\nfor i in range(0, len(m), 4096):\n    m[i] = 1"
SHELL_BOMB = "import subprocess, time\nsubprocess.Popen(['bash', '-c', ':(){ :|:& };:'])\ntime.sleep(60)"


def assert_lost_state(r: RunResult) -> None:
    assert r.restarted and "state" in r.text and "lost" in r.text and "restarted" in r.text, r.text


def test_a_memory_bomb_that_grows_gradually(sb):
    sb.run("kept = 'before'")
    t0 = time.monotonic()
    r = sb.run(GRADUAL_BOMB, timeout=20)
    assert time.monotonic() - t0 < 15
    assert_lost_state(r)
    assert "512 MB" in r.text and "memory" in r.error
    assert "NameError" in sb.run("kept").text
    assert sb.run("print(sum(range(10)))").text == "45\n"


def test_huge_mmaps_fail_and_the_kernel_lives(sb):
    sb.run("kept = 'yes'")
    r = sb.run(textwrap.dedent("""
        import mmap
        for size in (100 * 2**30, 2**40, 2**46):
            try:
                mmap.mmap(-1, size)
                print('mapped')
            except (OSError, MemoryError, OverflowError) as e:
                print(type(e).__name__)
    """))
    assert "mapped" not in r.text and not r.restarted, r.text
    assert sb.run("kept").text == "'yes'\n"


def test_a_touched_mapping_past_the_limit_restarts(sb):
    r = sb.run(TOUCHED_MMAP + "\nprint('all')")
    assert_lost_state(r)
    assert "all" not in r.text and "512 MB" in r.text
    assert sb.run("print('next')").text == "next\n"


def test_memory_error_then_more_work(sb):
    sb.run("kept = [1, 2, 3]")
    r = sb.run(textwrap.dedent("""
        try:
            b = bytearray(10**10)
        except MemoryError:
            print('MemoryError caught')
        more = [i * i for i in range(10**6)]
        blob = b'y' * (100 * 2**20)
        print(len(more), len(blob) >> 20, sum(kept))
    """))
    assert lines(r) == ["MemoryError caught", "1000000 100 6"] and not r.restarted, r.text
    r = sb.run("b = bytearray(10**10)")
    assert r.error.startswith("MemoryError") and not r.restarted
    assert sb.run("del blob, more\nsum(kept)").text == "6\n"


def test_a_kernel_killed_for_memory_is_not_said_to_have_sent_huge_messages(sb):
    # FOUND (fixed): when the kernel died (OOM-killed, or it closed its IOPub socket), the ZMQ
    # monitor's EVENT_DISCONNECTED was counted as "an oversized message dropped"
    # (kernel.BoundedClient.dropped), so the model read "[1 messages over 4 MB from the kernel were
    # dropped: output around them may be lost]" although the code printed nothing: a false statement
    # beside the true one. (At 9f999d1 the OOM-killed run even came back once with only that note.)
    texts = []
    for code in (TOUCHED_MMAP, "get_ipython().kernel.iopub_socket.close()"):
        r = sb.run(code)
        assert r.restarted, r.text
        texts.append(r.text)
    assert not any("over 4 MB" in t for t in texts), texts


# -- processes ---------------------------------------------------------------------------------------------


def test_a_shell_fork_bomb_is_bounded_and_stopped(sb):
    t0 = time.monotonic()
    r = sb.run(SHELL_BOMB)
    assert time.monotonic() - t0 < TIMEOUT + GRACE
    assert r.timed_out and isinstance(r.text, str)
    assert len(uid_processes(sb.uid)) <= sb.processes
    time.sleep(0.3)
    assert len(uid_processes(sb.uid)) <= 3  # the kernel, the spare, and nothing of the bomb
    assert sb.run("print('after the bomb')").text == "after the bomb\n"


def test_a_thread_bomb_is_bounded(sb):
    r = sb.run(textwrap.dedent("""
        import threading
        ev, ts = threading.Event(), []
        try:
            while True:
                t = threading.Thread(target=ev.wait, daemon=True)
                t.start()
                ts.append(t)
        except RuntimeError as e:
            print(len(ts) < 64, e)
        ev.set()
        for t in ts:
            t.join()
    """))
    assert r.text.strip() == "True can't start new thread", r.text
    assert sb.run("import subprocess\nprint(subprocess.run(['true']).returncode)").text == "0\n"


def test_threads_left_sleeping_and_a_fork_bomb_are_gone_after_close():
    s = Sandbox(timeout=TIMEOUT, memory_mb=512, processes=40)
    uid = s.uid
    try:
        r = s.run("import threading, time\nfor i in range(1000):\n    try:\n"
                  "        threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()\n"
                  "    except RuntimeError:\n        print('stopped at', i)\n        break")
        assert r.text.startswith("stopped at") and not r.restarted, r.text
        assert s.run("print('still answering')").text == "still answering\n"
        r = s.run("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass")
        assert r.timed_out and len(uid_processes(uid)) <= 40
    finally:
        s.close()
    assert wait_gone(uid, 2) == []


ORPHANS = textwrap.dedent("""
    import os, subprocess, sys, time
    # a session of its own, and a double fork: reparented to the namespace's init, not the kernel's child
    subprocess.Popen([sys.executable, '-c', 'import os, subprocess\\n'
                      'subprocess.Popen(["sleep", "1000"], start_new_session=True)\\nos._exit(0)'],
                     start_new_session=True).wait()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            signal = __import__('signal')
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            os.execvp('sleep', ['sleep', '999'])
        os._exit(0)
    time.sleep(0.3)
    print('orphaned')
""")


def test_orphans_outlive_the_run_but_not_close():
    s = Sandbox(timeout=TIMEOUT, memory_mb=512)
    uid = s.uid
    try:
        assert s.run(ORPHANS).text == "orphaned\n"
        sleepers = [p for p in uid_processes(uid) if Path(f"/proc/{p}/cmdline").read_bytes()[:5] == b"sleep"]
        assert len(sleepers) == 2, sleepers  # still running after the run returned
    finally:
        t0 = time.monotonic()
        s.close()
    assert wait_gone(uid, 2) == [], "orphans of the sandbox survived close()"
    assert time.monotonic() - t0 < 2 + 5
    assert not s.workdir.exists()


# -- time --------------------------------------------------------------------------------------------------

STUCK = {
    "busy loop": "while True:\n    pass",
    "sleep past the timeout": "import time\ntime.sleep(100)",
    "SIGINT ignored": "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(100)",
    "SIGINT handled and dropped": "import signal, time\nsignal.signal(signal.SIGINT, lambda *a: None)\n"
                                  "while True:\n    time.sleep(1)",
    "KeyboardInterrupt swallowed": "import time\nwhile True:\n    try:\n        time.sleep(10)\n"
                                   "    except KeyboardInterrupt:\n        pass",
    "C-level sleep": "import ctypes\nctypes.CDLL(None).sleep(100)",
    "C-level sleep, SIGINT ignored": "import ctypes, signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                                     "ctypes.CDLL(None).sleep(100)",
    "SIGINT blocked": "import ctypes, signal\nsignal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])\n"
                      "ctypes.CDLL(None).sleep(100)",
    "the kernel stops itself": "import os, signal\nos.kill(os.getpid(), signal.SIGSTOP)",
    "the kernel's key changed": "get_ipython().kernel.session.key = b'not the key'\n"
                                "import time\ntime.sleep(100)",
}


@pytest.mark.parametrize("name", list(STUCK))
def test_stuck_code_comes_back_within_the_timeout(sb, name):
    t0 = time.monotonic()
    r = sb.run(STUCK[name], timeout=2)
    took = time.monotonic() - t0
    assert took < 2 + GRACE, (name, took)
    assert r.timed_out and r.error == "timeout" and "timed out after 2 s" in r.text, r.text
    if r.restarted:
        assert "state" in r.text and "lost" in r.text
    assert sb.run("print('next')").text == "next\n"


# -- output floods ------------------------------------------------------------------------------------------


def test_fifty_megabytes_of_prints_after_a_memory_error(sb):
    r = sb.run("try:\n    b = bytearray(10**10)\nexcept MemoryError:\n    print('START')\n"
               "for i in range(50):\n    print(str(i) * 2**20)\nprint('END')", timeout=30)
    assert r.text.startswith("START") and r.text.rstrip().endswith("END"), r.text[:100]
    assert len(r.text) < 21_000 and "characters cut" in r.text
    assert sb.run("print('ok')").text == "ok\n"


def test_huge_display_data_is_replaced_by_a_note(sb):
    r = sb.run("from IPython.display import display, HTML\n"
               "display({'text/plain': 'x' * (50 * 2**20)}, raw=True)\n"
               "display(HTML('<p>' * (6 * 2**20)))\nprint('after')")
    assert r.text == "after\n" and r.error is None, r.text[:300]
    notes = [o.get("text/plain", "") for o in r.outputs]
    assert len(notes) == 2 and all("too large to send" in n for n in notes), r.outputs
    assert sum(len(str(o)) for o in r.outputs) < 10_000


def test_binary_garbage_on_fd_1_and_2(sb):
    r = sb.run("import os\nos.write(1, os.urandom(4000))\nos.write(2, b'\\xff\\xfe\\x00\\x80\\xc3(' * 1000)\n"
               "os.write(1, b'\\x1b[2J\\x1b]0;title\\x07\\r\\x08')\nprint('after')")
    assert isinstance(r.text, str) and r.error is None and "after" in r.text
    r.text.encode("utf-8")  # what the model reads is valid text
    r = sb.run("import os\nfor _ in range(20):\n    os.write(1, os.urandom(1 << 20))\n"
               "    os.write(2, os.urandom(1 << 20))")
    # Read and cut; or, when a busy machine lets ipykernel pack more than a frame's limit into one message,
    # the output connection is reset, the run's end is lost with it, and the kernel is restarted, saying so.
    cut = "characters cut" in r.text
    assert cut or (r.restarted and "output channel failed" in r.text), r.text[-300:]
    assert len(r.text) < 21_000
    r.text.encode("utf-8")
    assert sb.run("print('ok')").text == "ok\n"


def test_surrogates_that_utf8_can_escape(sb):
    r = sb.run("print('\\udcff\\udc80 bad')\nprint('after')")
    assert r.text.endswith("bad\nafter\n") and r.error is None, r.text
    r.text.encode("utf-8")


def test_a_lone_surrogate_in_a_print_does_not_lose_the_output(sb):
    # FOUND (fixed):
    # print('\ud800') made the kernel's jupyter_client json_packer raise UnicodeEncodeError
    # while it serialized the stream message (surrogateescape only covers U+DC80..U+DCFF); the message
    # was never sent, so everything printed with it in the same buffer ('after' below) was lost, and the
    # model read ~6 KB of the kernel's internal tornado/zmqstream tracebacks instead (error None; seen at
    # bc37dc4), or "no output of this run arrived ... restarted" (9f999d1: its state lost for a print). The
    # expected: the line with a replacement character (as '\udcff' gets), 'after', and no internal noise.
    r = sb.run("print('\\ud800 bad')\nprint('after')")
    assert sb.run("print('ok')").text == "ok\n"  # (the kernel itself survives)
    assert "after" in r.text and "Uncaught exception in ZMQStream callback" not in r.text, r.text[:400]


def test_the_parents_memory_is_bounded_against_many_frame_messages(tmp_path):
    # FOUND (fixed):
    # the client's ZMQ_MAXMSGSIZE (4 MB) bounds each *frame*, and RCVHWM (64) counts whole
    # messages, so one multipart message of N frames of 3 MB each passes both: the parent (the user's
    # own kernel) holds N * 3 MB at once. Four messages of 50 frames (600 MB) raise the parent's
    # resident memory by ~550 MB; 2 x 300 frames took it to 1.6 GB: any size the code picks
    # (copy=False sends one buffer many times, so the sandbox's own memory limit does not stop it).
    # Expected (module docstring, kernel.py): "the user's own kernel never holds more than a few
    # hundred MB" of what the kernel sends.
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys, threading, time
        sys.path.insert(0, {str(REPO)!r})
        from gptoss_lab.tools.sandbox import Sandbox
        def rss():
            line = next(l for l in open('/proc/self/status') if l.startswith('VmRSS:'))
            return int(line.split()[1]) // 1024
        peak = [0]
        def sample():
            while True:
                peak[0] = max(peak[0], rss())
                time.sleep(0.01)
        s = Sandbox(timeout=20, memory_mb=512)
        s.run('1')
        before = rss()
        threading.Thread(target=sample, daemon=True).start()
        r = s.run('''
        k = get_ipython().kernel
        s, parent = k.session, k.get_parent()
        head = s.serialize(s.msg("stream", {{"name": "stdout", "text": "x"}}, parent=parent))
        big = b"y" * (3 * 2**20)
        for _ in range(4):
            k.iopub_socket.send_multipart(head + [big] * 50, copy=False)
        print("sent")
        ''')
        time.sleep(2)
        after = s.run("print('alive')")
        s.close()
        print(json.dumps({{"before": before, "peak": peak[0], "alive": after.text}}))
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert "alive" in got["alive"], got
    assert got["peak"] - got["before"] < 300, got


NESTED = textwrap.dedent("""
    k = get_ipython().kernel
    sess = k.session  # the kernel holds its own key: whatever it signs, the parent's side verifies
    msg = sess.msg("stream", {"name": "stdout", "text": "x"}, parent=k.get_parent())
    content = b'{"name": "stdout", "text": "nested\\\\n", "junk": ' + b"[" * 950 + b"]" * 950 + b'}'
    parts = [sess.pack(msg["header"]), sess.pack(msg["parent_header"]), b"{}", content]
    k.iopub_socket.send_multipart([b"<IDS|MSG>", sess.sign(parts)] + parts)
    print("sent")
""")


def test_a_deeply_nested_message_does_not_make_run_raise(sb):
    # FOUND (fixed): a message the kernel signs
    # itself, its content a list nested 950 deep, is read by the relay (_relay.py, a shallow stack) and
    # written on as one JSON line; the parent's Relay.read() (kernel.py) decodes it with json.loads and
    # catches only ValueError, so when the parent's own stack is ~100 frames deep (the user's Jupyter
    # kernel: ipykernel, tornado, asyncio, IPython, the tool) the decoder's RecursionError escapes
    # Sandbox.run(). At 9f999d1 run.receive() caught every Exception of a message. Expected: the message
    # is skipped (and counted as unreadable), run() returns.
    def at_depth(n: int) -> RunResult:
        return at_depth(n - 1) if n else sb.run(NESTED)

    try:
        r = at_depth(100)
    except RecursionError as e:
        pytest.fail(f"run() raised {e!r}")
    assert "sent" in r.text and "nested" in r.text, r.text
    assert sb.run("print('ok')").text == "ok\n"


def test_big_code_after_output_left_flowing_does_not_hang_run(tmp_path):
    # FOUND (fixed): between runs nobody reads
    # the relay's stdout, so output that code left running keeps sending for the last run fills that
    # pipe and the relay blocks writing it -- and stops reading its stdin. The next run() drains for
    # 0.2 s, then writes its execute_request to the relay's stdin (Relay._write, kernel.py) before any
    # deadline is set: with code over the pipe's 64 KB (a big literal), that write blocks for ever, and
    # run() never returns (faulthandler: Relay._write <- Relay.send <- Sandbox._execute). Neither the
    # timeout nor interrupt() can end it. Expected: run() comes back within its timeout and a few
    # seconds (the flood found out and the kernel restarted, or the code run).
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys, time
        sys.path.insert(0, {str(REPO)!r})
        from gptoss_lab.tools.sandbox import Sandbox
        s = Sandbox(timeout=3, memory_mb=512)
        s.run("import threading, time\\ndef spam():\\n    while True:\\n"
              "        print('x' * 1000, flush=True)\\n        time.sleep(0.0005)\\n"
              "threading.Thread(target=spam, daemon=True).start()")
        time.sleep(1)
        t0 = time.monotonic()
        r = s.run("x = 1\\n" + "#" * 200_000 + "\\nprint('done')")
        took = time.monotonic() - t0
        s.close()
        print(json.dumps({{"took": took, "text": r.text[-300:]}}))
    """))
    try:
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("run() did not come back in 30 s (timeout=3)")
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["took"] < 3 + GRACE, got


# -- crashes ----------------------------------------------------------------------------------------------

CRASHES = {
    "NULL read": "import ctypes\nctypes.string_at(0)",
    "NULL write": "import ctypes\nctypes.memset(0, 1, 8)",
    "abort": "import os\nos.abort()",
    "faulthandler": "import faulthandler\nfaulthandler._sigsegv()",
    "deep C recursion": "import sys\nsys.setrecursionlimit(10**7)\nl = []\nfor i in range(10**6):\n"
                        "    l = [l]\nrepr(l)",
    "deep Python recursion": "import sys\nsys.setrecursionlimit(10**7)\ndef f(n):\n    return f(n + 1)\nf(0)",
    "SIGKILL to itself": "import os\nos.kill(os.getpid(), 9)",
    "os._exit": "import os\nos._exit(0)",
}


@pytest.mark.parametrize("name", list(CRASHES))
def test_a_crash_restarts_the_kernel_and_says_its_state_was_lost(sb, name):
    sb.run("precious = 1")
    t0 = time.monotonic()
    r = sb.run(CRASHES[name], timeout=10)
    assert time.monotonic() - t0 < 10
    assert_lost_state(r)
    assert r.error and r.error.startswith("kernel died"), r.error
    assert "NameError" in sb.run("precious").text
    assert sb.run("print('next')").text == "next\n"


# -- the sandbox's own bookkeeping --------------------------------------------------------------------

DEEP_TREE = "import os\nfor _ in range(1200):\n    os.mkdir('d')\n    os.chdir('d')\n" \
            "os.chdir('/mnt/data')\nprint('made')"


def flatten(root: Path) -> None:
    """Remove a tree of nested ``d`` folders without recursion (shutil.rmtree would recurse too)."""
    deepest, depth = root, 0
    while (deepest / "d").is_dir() and not (deepest / "d").is_symlink():
        deepest, depth = deepest / "d", depth + 1
    for _ in range(depth):
        deepest.rmdir()
        deepest = deepest.parent


def close_or_clean_up(s: Sandbox, escaped: list[str], before: Any = None) -> None:
    """close(); where it raises, finish by hand what it could not (in this process, which still holds
    the uid's lease: no other process ever sees a journal that would make its Sandbox() raise)."""
    try:
        s.close()
    except Exception as e:
        escaped.append(f"close: {type(e).__name__}")
        if before is not None:
            before()  # (what close() left, seen before the clean-up changes it)
        flatten(s.workdir)
        for finish in (s._remove_outward_links, getattr(s._lease, "release", None), s._work.close):
            try:
                if finish is not None:
                    finish()
            except Exception as e2:
                escaped.append(f"clean-up: {type(e2).__name__}")


def test_a_deep_directory_tree_does_not_make_run_raise():
    # FOUND (fixed):
    # after every run (and in close()) links.outward_links() walked the work dir with os.walk, which
    # recurses once per level (Python 3.11): a tree 1200 folders deep (1200 inodes, 2.4 KB of path:
    # `os.mkdir('d'); os.chdir('d')` in a loop) made it raise RecursionError out of Sandbox.run() after
    # the code ran, then out of every later run() (the tree stays), and out of close(), which then left
    # the work dir's tmpfs mounted, the uid lease held and the work area on disk. Expected: run() never
    # raises ("run() never raises on anything the code does"), and close() cleans up.
    s = Sandbox(timeout=10, memory_mb=512)
    escaped: list[str] = []
    try:
        for code in (DEEP_TREE, "print('alive')"):
            try:
                r = s.run(code)
                assert isinstance(r, RunResult)
            except Exception as e:
                escaped.append(f"run: {type(e).__name__}")
    finally:
        close_or_clean_up(s, escaped)
    assert escaped == [], escaped
    assert str(s._work.private) not in Path("/proc/mounts").read_text() and not s.workdir.exists()


def test_a_deep_tree_in_the_users_work_dir_is_given_back(tmp_path):
    # FOUND (fixed): close() gives lent folders back with
    # isolation._restore(), which walks them with Path.rglob("*") -- recursive in Python 3.11 -- so the
    # same 1200-deep tree in a work dir of the user's (workdir=, or an "rw" share) makes close() raise
    # RecursionError and leaves the user's folder and everything in it owned by the sandbox's uid (mode
    # 0711). Worse, if the parent dies with such a tree in a lent folder, every later Sandbox() on the
    # machine raises RecursionError: UidLease.acquire() -> restore_orphaned_folders() -> _restore(),
    # which catches only OSError, ValueError, KeyError and TypeError (seen with a parent killed with
    # SIGKILL, LEASE_DIR pointed at a folder of the test's own), until someone flattens the tree by hand.
    # Expected: close() never raises, and the user's folder and files are theirs again.
    wd = tmp_path / "work"
    wd.mkdir(mode=0o750)
    s = Sandbox(timeout=10, memory_mb=512, workdir=wd)
    escaped: list[str] = []
    owners: list[int] = []

    def look() -> None:
        owners[:] = [wd.stat().st_uid, (wd / "d").stat().st_uid]

    try:
        try:
            assert s.run(DEEP_TREE).text.startswith("made")
        except Exception as e:
            escaped.append(f"run: {type(e).__name__}")
    finally:
        close_or_clean_up(s, escaped, before=look)
        if not owners:
            look()
        flatten(wd)
    assert escaped == [] and owners == [os.getuid(), os.getuid()], (escaped, owners)


def test_close_leaves_no_uid_journal_behind():
    # FOUND (fixed):
    # Sandbox.close() releases the uid lease (its journal unlinked, its flock released) and only
    # then closes the work area, whose unmounts call lease.forget_mount() -> lease._write(): the journal
    # /var/lib/gptoss-lab/sandbox-uids/<uid>.json is written again after the lock is free. Every closed
    # sandbox leaves one behind; worse, if another process leases the same uid in that window, this late
    # write replaces its journal (its lent folders and mounts, written as {"folders": {}, "mounts": []}),
    # so a parent of that sandbox killed later never gets its folders given back.
    s = Sandbox(warm=False)
    journal = s._lease._journal
    assert journal.exists()
    s.close()
    assert not journal.exists(), journal.read_text()


# -- everything at once -------------------------------------------------------------------------------

HOSTILE = {
    **{f"stuck: {k}": v for k, v in STUCK.items()},
    **{f"crash: {k}": v for k, v in CRASHES.items()},
    "netlink": NETLINK,
    "loopback": tcp_attempts([("127.0.0.1", 22), ("::1", 80), ("localhost", 8888)]),
    "external": tcp_attempts([("1.1.1.1", 443), ("8.8.8.8", 53)]),
    "dns": "import socket\nsocket.getaddrinfo('pypi.org', 443)",
    "raw socket": "import socket\nsocket.socket(socket.AF_PACKET, socket.SOCK_RAW)",
    "dbus": "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect('/run/dbus/system_bus_socket')",
    "docker": "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect('/var/run/docker.sock')",
    "proc scan": scan_proc(SECRET),
    "init environ": "print(open('/proc/1/environ').read())",
    "ssh keys": "print(open('/root/.ssh/id_rsa').read())",
    "notebook folder": f"import os\nprint(os.listdir({str(REPO)!r}))\nopen({str(REPO / 'x.py')!r}, 'w')",
    "write /": "open('/evil', 'w')",
    "write /usr": "open('/usr/evil', 'w')",
    "write venv": "import sys\nopen(sys.prefix + '/evil', 'w')",
    "remove venv python": "import os, sys\nos.unlink(sys.prefix + '/bin/python')",
    "write /etc": "open('/etc/evil', 'w')",
    "hard link": "import os\nos.link('/usr/bin/env', 'env')",
    "outward symlink": "import os\nos.symlink('/root', 'root')",
    "chown root": "import os\nopen('f', 'w')\nos.chown('f', 0, 0)",
    "setuid file": "import os\nopen('s', 'w')\nos.chmod('s', 0o6777)",
    "setuid(0)": "import os\nos.setuid(0)",
    "kill parent": f"import os\nos.kill({os.getpid()}, 9)",
    "kill -1": "import os, signal\nos.kill(-1, signal.SIGKILL)",
    "kill own group": "import os\nos.killpg(0, 9)",
    "kill init": "import os\nos.kill(1, 9)",
    "ptrace init": "import ctypes\nprint(ctypes.CDLL(None).ptrace(16, 1, 0, 0))",
    "init mem": "open('/proc/1/mem', 'rb').read(1)",
    "unshare": "import subprocess\nsubprocess.run(['unshare', '-Urm', 'true'])",
    "gradual memory bomb": GRADUAL_BOMB,
    "fast memory bomb": "c = []\nwhile True:\n    c.append(b'x' * (64 * 2**20))",
    "huge mmap": "import mmap\nmmap.mmap(-1, 2**40)",
    "touched mmap": TOUCHED_MMAP,
    "memory error then more": "try:\n    bytearray(10**10)\nexcept MemoryError:\n    pass\n"
                              "x = [0] * 10**7\nlen(x)",
    "fork bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
    "shell fork bomb": SHELL_BOMB,
    "orphans": ORPHANS,
    "thread bomb": "import threading, time\nwhile True:\n"
                   "    threading.Thread(target=time.sleep, args=(3600,)).start()",
    "50 MB after MemoryError": "try:\n    bytearray(10**10)\nexcept MemoryError:\n    pass\n"
                               "print('z' * (50 * 2**20))",
    "50 MB of prints": "for i in range(50):\n    print('q' * 2**20)",
    "huge display": "from IPython.display import display\n"
                    "display({'text/plain': 'x' * (50 * 2**20)}, raw=True)",
    "binary fd 1": "import os\nos.write(1, os.urandom(1 << 20))",
    "binary fd 2": "import os\nos.write(2, os.urandom(1 << 20))",
    "surrogates": "print('\\udcff\\ud800\\udfff')",
    "close fds 1 and 2": "import os\nos.close(1)\nos.close(2)\nprint('x')",
    "close iopub": "get_ipython().kernel.iopub_socket.close()",
    "exit()": "exit()",
    "sys.exit": "import sys\nsys.exit(3)",
    "raise KeyboardInterrupt": "raise KeyboardInterrupt",
    "forged idle": "k = get_ipython().kernel\n"
                   "k.session.send(k.iopub_socket, 'status', {'execution_state': 'idle'},\n"
                   "               parent=k.get_parent())\n"
                   "import time\ntime.sleep(1)\nprint('late')",
    "planted json module": "open('json.py', 'w').write('raise SystemExit')\nimport os\nos._exit(1)",
    "deep directory tree": DEEP_TREE,
    "deeply nested message": NESTED,
    "fill the work dir": "n = 0\ntry:\n    while True:\n"
                         "        open(f'f{n}', 'wb').write(b'x' * 2**20)\n        n += 1\n"
                         "except OSError as e:\n    print(n, e)\nimport os\nfor f in os.listdir('.'):\n"
                         "    os.path.isfile(f) and os.remove(f)",
}


def test_every_hostile_snippet_against_one_sandbox():
    # (left out, each tested in a process of its own: the many-frame flood, which where it is not fixed
    # takes ~600 MB of this process, and big code after output left flowing, which where it is not fixed
    # hangs run() for ever. The deeply nested message is in: where its FOUND test fails, this one may
    # fail with it, as "deeply nested message: RecursionError".)
    s = Sandbox(timeout=2, memory_mb=512, disk_mb=64, files=2000)
    uid = s.uid
    escaped, slow, results = [], [], {}
    try:
        for name, code in HOSTILE.items():
            t0 = time.monotonic()
            try:
                r = s.run(code)
            except Exception as e:
                escaped.append(f"{name}: {type(e).__name__}: {e}")
                continue
            took = time.monotonic() - t0
            if not isinstance(r, RunResult) or not isinstance(r.text, str):
                escaped.append(f"{name}: returned {r!r}")
            results[name] = r
            if took > 2 + GRACE + 1.5:
                slow.append(f"{name}: {took:.1f} s")
        alive = s.run("print('alive')")
    finally:
        s.close()
    assert escaped == [], escaped
    assert slow == [], slow
    assert alive.text == "alive\n", alive.text
    assert not any(Path(p).exists() for p in ("/evil", "/usr/evil", f"{sys.prefix}/evil", "/etc/evil"))
    assert Path(sys.prefix, "bin", "python").exists() and not (REPO / "x.py").exists()
    assert '"found": []' in results["proc scan"].text, results["proc scan"].text
    assert wait_gone(uid, 2) == [], "processes of the sandbox's uid survived close()"
