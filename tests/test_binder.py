"""binder/ alone builds an environment that runs the quickstart headless, as mybinder (repo2docker) would:
a new virtual environment, `pip install -r binder/requirements.txt` from the repository's root, the Debian
packages of binder/apt.txt, binder/postBuild, then binder/start in front of the notebook's kernel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from gptoss_lab.display.bundle import MIME

REPO = Path(__file__).resolve().parent.parent
BINDER = REPO / "binder"
# Which command each Debian package of apt.txt gives (make test installs them as root, as repo2docker does).
COMMANDS = {"bubblewrap": "bwrap", "g++": "g++"}

RUN_QUICKSTART = """
import sys
import nbformat
from nbclient import NotebookClient
nb = nbformat.read("quickstart.ipynb", as_version=4)
NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": "."}}).execute()
nbformat.write(nb, sys.argv[1])
"""


def lines(name: str) -> list[str]:
    return [s for line in (BINDER / name).read_text().splitlines() if (s := line.strip()) and not s.startswith("#")]


def test_binder_files_are_what_repo2docker_reads():
    assert lines("runtime.txt") == [f"python-{sys.version_info.major}.{sys.version_info.minor}"]
    for f in ("postBuild", "start"):
        assert os.access(BINDER / f, os.X_OK), f"binder/{f} must be executable"
    assert set(lines("apt.txt")) <= set(COMMANDS), "a package of apt.txt this test does not know"
    reqs = lines("requirements.txt")
    assert ".[lab]" in reqs and any(r.startswith("torch==") and r.endswith("+cpu") for r in reqs)
    readme = (REPO / "README.md").read_text()
    assert "mybinder.org/badge_logo.svg" in readme and "urlpath=lab/tree/notebooks/quickstart.ipynb" in readme


def test_an_environment_built_from_binder_alone_runs_the_quickstart(tmp_path):
    missing = [c for c in (COMMANDS[p] for p in lines("apt.txt")) if not shutil.which(c)]
    if missing:
        msg = f"binder/apt.txt's packages are not installed: {missing} (make test installs them as root)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    python = shutil.which(version) or sys.executable
    venv, home = tmp_path / "env", tmp_path / "home"
    home.mkdir()
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPTOSS_LAB_", "VIRTUAL_ENV", "PYTHON", "JUPYTER"))}
    env.update({
        "HOME": str(home),  # a new user: no caches, kernels or settings of ours
        "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', os.defpath)}",
        "VIRTUAL_ENV": str(venv),
        # This machine reaches only the package registries: the PyTorch index of requirements.txt fails at
        # once instead of after pip's retries (binder reaches it; here the registry's files serve instead).
        "PIP_RETRIES": "0",
        "PIP_CACHE_DIR": str(Path.home() / ".cache" / "pip"),  # downloads kept between runs, as binder's layers
    })

    def run(*cmd: str, cwd: Path = REPO, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done

    run(str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-r", "binder/requirements.txt")
    run(str(BINDER / "postBuild"))
    config = home / ".jupyter" / "jupyter_server_config.py"
    assert "/lab/tree/notebooks/quickstart.ipynb" in config.read_text()
    assert list((home / ".cache" / "gptoss-lab" / "cpu-ext").glob("*/*.so")), "postBuild built the CPU kernels"
    # nothing of this checkout's own environment is used: the venv's gptoss_lab is an installed copy
    where = run(str(venv / "bin" / "python"), "-c", "import gptoss_lab, torch; print(gptoss_lab.__file__, torch.__version__)",
                cwd=tmp_path).stdout
    assert str(venv) in where and "+cpu" in where

    script, out = tmp_path / "run.py", tmp_path / "quickstart.out.ipynb"
    script.write_text(RUN_QUICKSTART)
    run(str(BINDER / "start"), str(venv / "bin" / "python"), str(script), str(out), cwd=REPO / "notebooks")
    nb = nbformat.read(out, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    transcripts = [o.data[MIME] for o in outputs if MIME in o.get("data", {})]
    arithmetic = next(t for t in transcripts if t["messages"][0]["content"] == "What is 1234*5678?")
    assert [m["content"] for m in arithmetic["messages"] if m["role"] == "tool"] == ["7006652\n"]
