# The reader between a sandbox kernel and the user's kernel: `python -I -c <this file's text>`, its
# spec (JSON) on the first line of stdin, run as a process of its own under a memory limit.
#
# Why a process: ZMQ bounds a frame (ZMQ_MAXMSGSIZE) and a count of whole messages (ZMQ_RCVHWM), not
# the bytes of one message, so code in the kernel can send one multipart message of any size and the
# receiving process holds it all. Here that process is this one, bounded by RLIMIT_AS: past it, it
# dies, and the parent restarts the kernel. The parent reads only what is written here: one JSON line
# per message, each at most `max_line` bytes, with messages of other requests than the one watched
# (code left running, floods) reduced to counts.
#
# stdin, one JSON object per line: {"send": CHANNEL, "msg_type": T, "content": {...}, "msg_id": ID}
# sends a request (and, for "shell", watches its msg_id); {"watch": ID} watches another.
# stdout, one JSON object per line: {"channel", "msg_type", "parent", "content"} for the watched
# request; {"counts": {...}} every 0.1 s while something was set aside.
import json
import os
import resource
import sys
import time


def first_line():  # unbuffered: what follows the spec on stdin is read by the loop below
    data = b""
    while not data.endswith(b"\n"):
        byte = os.read(0, 1)
        if not byte:
            sys.exit(0)
        data += byte
    return data


spec = json.loads(first_line())
limit = int(spec["memory_bytes"])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

import zmq  # noqa: E402
from jupyter_client.session import Session  # noqa: E402

MAX_FRAME = int(spec["max_message_bytes"])
MAX_FRAMES = int(spec["max_frames"])
MAX_LINE = int(spec["max_line_bytes"])
conn = spec["connection"]
session = Session(key=conn["key"].encode(), signature_scheme=conn["signature_scheme"], username="gptoss-lab")
ctx = zmq.Context()
sockets = {}
for channel, kind in (("iopub", zmq.SUB), ("shell", zmq.DEALER), ("control", zmq.DEALER)):
    sock = ctx.socket(kind)
    sock.linger = 0
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME)
    sock.setsockopt(zmq.RCVHWM, int(spec["queue_messages"]))
    if kind == zmq.SUB:
        sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(f"ipc://{conn['ip']}-{conn[channel + '_port']}")
    sockets[channel] = sock
monitor = sockets["iopub"].get_monitor_socket(zmq.EVENT_DISCONNECTED)
out = os.fdopen(1, "wb", buffering=0)
watched = None
counts = {"foreign": 0, "foreign_bytes": 0, "oversized": 0, "undecodable": 0, "disconnects": 0}
last_counts = 0.0


def emit(doc):
    line = json.dumps(doc, ensure_ascii=False, default=str).encode("utf-8", "replace") + b"\n"
    if len(line) > MAX_LINE:
        counts["oversized"] += 1
        return
    out.write(line)


def flush_counts(force=False):
    global last_counts
    now = time.monotonic()
    if any(counts.values()) and (force or now - last_counts > 0.1):
        emit({"counts": dict(counts)})
        for k in counts:
            counts[k] = 0
        last_counts = now


# What the parent reads of each kind of message; everything else in a content is left here.
FIELDS = {
    "stream": ("name", "text"), "execute_result": ("data", "execution_count"), "display_data": ("data",),
    "update_display_data": ("data",), "error": ("ename", "evalue", "traceback"), "status": ("execution_state",),
    "execute_input": (), "execute_reply": ("status",), "kernel_info_reply": ("status",),
}
MAX_DEPTH = 32  # a rich output's JSON nested deeper is left out: the parent's decoder recurses


def shallow(value):
    stack = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if depth > MAX_DEPTH:
            return False
        if isinstance(v, dict):
            stack.extend((x, depth + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, depth + 1) for x in v)
    return True


def trimmed(msg_type, content):
    if not isinstance(content, dict):
        return content
    out = {k: content[k] for k in FIELDS.get(msg_type, ()) if k in content}
    if isinstance(out.get("data"), dict):
        out["data"] = {k: v for k, v in out["data"].items() if shallow(v)}
    if not shallow(out):
        counts["undecodable"] += 1
        return {}
    return out


def receive(channel, sock):
    frames = sock.recv_multipart(copy=False)
    size = sum(len(f) for f in frames)
    if len(frames) > MAX_FRAMES:
        counts["oversized"] += 1
        return
    frames = [f.bytes for f in frames]
    try:
        i = frames.index(b"<IDS|MSG>")
        parent = json.loads(frames[i + 3])
        if not isinstance(parent, dict) or parent.get("msg_id") != watched:
            counts["foreign"] += 1
            counts["foreign_bytes"] += size
            return
        msg = session.deserialize(frames[i + 1:])
    except Exception:  # unsigned, not JSON, cut: counted, never forwarded
        counts["undecodable"] += 1
        return
    kind = msg.get("msg_type")
    content = trimmed(kind, msg.get("content"))
    if kind == "execute_reply" or (kind == "status" and isinstance(content, dict)
                                   and content.get("execution_state") == "idle"):
        flush_counts(force=True)  # what was set aside during the run reaches the parent before its end
    emit({"channel": channel, "msg_type": kind, "parent": watched, "content": content})


def command(line):
    global watched
    doc = json.loads(line)
    if "watch" in doc:
        watched = doc["watch"]
        return
    msg = session.msg(doc["msg_type"], content=doc.get("content") or {})
    msg["header"]["msg_id"] = msg["msg_id"] = doc.get("msg_id") or msg["msg_id"]
    if doc["send"] == "shell":
        watched = msg["msg_id"]
    session.send(sockets[doc["send"]], msg)


poller = zmq.Poller()
for channel, sock in sockets.items():
    if channel != "control":
        poller.register(sock, zmq.POLLIN)
poller.register(monitor, zmq.POLLIN)
poller.register(0, zmq.POLLIN)
pending = b""
while True:
    ready = dict(poller.poll(100))
    for channel, sock in sockets.items():
        if ready.get(sock):
            for _ in range(64):  # a burst at a time, then look at the parent's commands again
                if not sock.poll(0):
                    break
                receive(channel, sock)
    if ready.get(monitor):
        while monitor.poll(0):
            monitor.recv_multipart()
            counts["disconnects"] += 1
    if ready.get(0):
        chunk = os.read(0, 65536)
        if not chunk:
            break  # the parent is gone, or closed us
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            command(line)
    flush_counts()
