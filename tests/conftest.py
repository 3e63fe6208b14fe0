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


# The tiers (pyproject.toml registers them): `make test` and CI run all of them; `pytest -m unit` is
# the fast loop (no kernel, no sandbox, no browser). A module is in the tier of the heaviest thing it runs.
TIERS = {
    "browser": {"test_lab_ui"},
    "kernel": {"test_notebook", "test_quickstart", "test_magics", "test_curriculum", "test_binder"},
    "sandbox": {"test_sandbox", "test_sandbox_dos", "test_sandbox_hostile", "test_sandbox_unprivileged",
                "test_session", "test_nano"},
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1]
        tier = next((t for t, mods in TIERS.items() if module in mods), "unit")
        item.add_marker(getattr(pytest.mark, tier))


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
def cpu_kernels():
    """The CPU engine's compiled extension (`make install` builds it): where it is missing a test fails in
    CI and is skipped elsewhere, naming why."""
    from gptoss_lab.cpu import build

    ops = build.ops()
    if ops is None:
        msg = f"the CPU kernels are not built here: {build.why_not()}"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return ops


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


@pytest.fixture
def root() -> None:
    """The bwrap+uid tier (a uid of the sandbox's own, lent folders) exists only for root."""
    if os.getuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("CI runs as root: the bwrap+uid tier's tests need it")
        pytest.skip("needs root: the bwrap+uid tier (run make test as root, as CI does)")
