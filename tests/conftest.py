from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings

# In CI the property tests replay the same examples every run: a failure there is reproducible.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

REPO = Path(__file__).resolve().parent.parent
# openai-harmony's own test data lives beside the repository (../shared), never inside it.
VECTORS = REPO.parent / "shared" / "harmony-vectors"
# benchmarks.corpus: the realistic completions that the tests share with `make bench`.
sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def enc():
    import gptoss_lab

    return gptoss_lab.encoding()


@pytest.fixture(scope="session")
def vectors() -> Path:
    if not VECTORS.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"the Harmony test vectors are missing: expected {VECTORS} (../shared beside the repo)")
        pytest.skip(
            f"the Harmony test vectors are not here: {VECTORS} (../shared) exists only in the project's workspace"
        )
    return VECTORS


@pytest.fixture(scope="session")
def offline() -> tuple[str, ...]:
    """A command prefix that runs a program in a new network namespace: no network, loopback down."""
    if shutil.which("unshare") and subprocess.run(["unshare", "-rn", "true"]).returncode == 0:
        return ("unshare", "-rn")
    if os.environ.get("CI"):
        pytest.fail("unshare -rn is needed to run programs with no network (util-linux, user namespaces)")
    pytest.skip("unshare -rn is not available here: cannot cut the network for this test")


def ipython_shell():
    """The test process's one IPython InteractiveShell (IPython starts it once per process)."""
    from IPython import get_ipython
    from IPython.testing.globalipapp import start_ipython

    return start_ipython() or get_ipython()
