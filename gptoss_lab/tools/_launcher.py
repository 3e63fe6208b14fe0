# Runs inside the sandbox as `python -c <this file's text> ARGS`: it is passed as text because the
# package's own folder is not visible in there. It imports the kernel while it may still read
# everything it needs, sets the resource limits, drops to an unprivileged user, and becomes the kernel.
import json
import os
import resource
import sys

spec = json.loads(sys.argv[1])

# Import before the limits and the user change: the kernel's modules must load in full.
import ipykernel.ipkernel  # noqa: E402,F401
import IPython.core.interactiveshell  # noqa: E402,F401
from ipykernel.kernelapp import IPKernelApp  # noqa: E402


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

os.umask(0o022)
sys.argv = ["gptoss-lab-sandbox-kernel", "-f", spec["connection_file"], "--HistoryManager.enabled=False",
            "--IPKernelApp.quiet=True"]
if spec.get("parent_pid"):
    # Outside a PID namespace nothing kills the kernel with its parent: it watches the parent itself.
    sys.argv.append(f"--IPKernelApp.parent_handle={spec['parent_pid']}")
IPKernelApp.launch_instance()
