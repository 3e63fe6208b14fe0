# Runs inside the sandbox as `python -I -c <this file's text>`, with its spec (JSON) on stdin: it is
# passed as text because the package's own folder is not visible in there, and the spec (which holds
# the kernel's key) never touches a folder the sandbox can write or a command line others can read.
# It imports the kernel while it may still read everything it needs, sets the resource limits,
# drops to an unprivileged user, and becomes the kernel.
import json
import os
import resource
import sys

spec = json.loads(sys.stdin.read())
sys.stdin.close()
os.close(0)
os.open(os.devnull, os.O_RDONLY)  # fd 0 again, for whatever expects one

# Import before the limits and the user change: the kernel's modules must load in full.
import ipykernel.ipkernel  # noqa: E402,F401
import IPython.core.interactiveshell  # noqa: E402,F401
from ipykernel.kernelapp import IPKernelApp  # noqa: E402
from jupyter_client.session import Session  # noqa: E402


def limit(name, value):
    if value is None:
        return
    res = getattr(resource, name)
    resource.setrlimit(res, (value, value))


limit("RLIMIT_AS", spec.get("address_space"))
limit("RLIMIT_CPU", spec.get("cpu_seconds"))
limit("RLIMIT_NPROC", spec.get("processes"))
limit("RLIMIT_FSIZE", spec.get("file_bytes"))
limit("RLIMIT_NOFILE", spec.get("open_files"))
limit("RLIMIT_CORE", 0)

uid = spec.get("uid")
if uid is not None and os.getuid() == 0:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)  # from here on no capability is left, and RLIMIT_NPROC counts this uid only

conn = spec["connection_file"]  # written as the kernel's own user, in a folder of this start's only
fd = os.open(conn, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
with os.fdopen(fd, "w") as f:
    json.dump(spec["connection"], f)

# Messages past the parent's size limit are dropped on its side without a word; cut them here first
# so that the model reads what happened. (Code in the kernel can undo this: the parent's limit holds.)
MAX = int(spec.get("max_message_bytes", 4 * 2**20)) // 2
_send = Session.send


def _valid(value):
    # A lone surrogate ('\ud800') cannot be sent as UTF-8: the message would be lost with everything
    # printed beside it, and the model would read the kernel's own traceback instead.
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
        return value
    if isinstance(value, dict):
        return {_valid(k): _valid(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_valid(v) for v in value]
    return value


def _shrink(msg_type, content):
    if not isinstance(content, dict):
        return content
    content = _valid(content)
    if msg_type == "stream" and isinstance(content.get("text"), str) and len(content["text"]) > MAX:
        text = content["text"]
        cut = len(text) - MAX
        note = f"\n[... {cut} characters not sent: one write was larger than the sandbox sends at once ...]\n"
        return {**content, "text": text[: MAX // 2] + note + text[-MAX // 2:]}
    data = content.get("data")
    if msg_type in ("display_data", "execute_result", "update_display_data") and isinstance(data, dict):
        size = sum(len(v) if isinstance(v, str) else len(json.dumps(v, default=str)) for v in data.values())
        if size > MAX:
            return {**content, "data": {"text/plain": f"[an output of {size} bytes was too large to send]"},
                    "metadata": {}}
    return content


def send(self, stream, msg_or_type, content=None, *args, **kwargs):
    if isinstance(msg_or_type, str):
        content = _shrink(msg_or_type, content)
    elif isinstance(msg_or_type, dict) and isinstance(msg_or_type.get("header"), dict):
        kind = msg_or_type["header"].get("msg_type")
        msg_or_type = {**msg_or_type, "content": _shrink(kind, msg_or_type.get("content"))}
    return _send(self, stream, msg_or_type, content, *args, **kwargs)


Session.send = send  # type: ignore[method-assign]

os.umask(0o022)
sys.argv = ["gptoss-lab-sandbox-kernel", "-f", conn, "--HistoryManager.enabled=False", "--IPKernelApp.quiet=True"]
if spec.get("parent_pid"):
    # Outside a PID namespace nothing kills the kernel with its parent: it watches the parent itself.
    sys.argv.append(f"--IPKernelApp.parent_handle={spec['parent_pid']}")
IPKernelApp.launch_instance()
