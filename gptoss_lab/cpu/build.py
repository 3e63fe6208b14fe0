"""Building and loading the engine's C++ extension (``csrc/``), once per source version and torch.

``make install`` builds it where a compiler exists (``python -m gptoss_lab.cpu.build``); otherwise the
first load compiles it into ``<cache>/cpu-ext/<key>/`` (about a minute). Where neither works, ``ops()``
returns ``None`` with one line saying why, and the engine runs its pure-torch fallback.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import sys
from pathlib import Path
from typing import Any

CSRC = Path(__file__).parent / "csrc"
SOURCES = ("ops.cpp", "attention.cpp", "layers.cpp", "scalar.cpp", "avx2.cpp", "avx512.cpp")
CFLAGS = ("-O3", "-fno-math-errno")
# at::parallel_for is inline: without -fopenmp its OpenMP pragma compiles to nothing and every kernel runs
# on one thread. Linked this way the extension shares the libgomp torch loaded (one pool, torch's threads).
OPENMP = ("-fopenmp",) if sys.platform.startswith("linux") else ()


class BuildUnavailable(RuntimeError):
    """The extension cannot be built or loaded here; the message says why and what to do."""


def key() -> str:
    """What the build depends on: the sources, the flags, torch and Python."""
    import torch

    h = hashlib.sha256()
    for name in SOURCES + ("kernels.h", "ops.h"):
        h.update((CSRC / name).read_bytes())
    h.update(" ".join(CFLAGS + OPENMP).encode())
    return f"torch{torch.__version__.replace('+', '_')}-py{sys.version_info[0]}{sys.version_info[1]}-{h.hexdigest()[:12]}"


def build_dir() -> Path:
    from ..harmony.vocab import cache_dir

    return cache_dir() / "cpu-ext" / key()


def compiler() -> str | None:
    """The C++ compiler torch would use, if one is on PATH."""
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++") or shutil.which("clang++")


def _ninja_on_path() -> None:
    # The ninja wheel installs its binary next to the interpreter; a venv that is not activated lacks it on PATH.
    bindir = str(Path(sys.executable).parent)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")


def load_extension(verbose: bool = False) -> Any:
    """Build (if needed) and import the extension; raises ``BuildUnavailable`` with the reason."""
    if compiler() is None and not any(build_dir().glob("*.so")):
        raise BuildUnavailable("no C++ compiler found (install g++ or clang, or Xcode's command-line tools on a Mac)")
    _ninja_on_path()
    from torch.utils import cpp_extension

    out = build_dir()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return cpp_extension.load(
            name=f"gptoss_cpu_{key().rsplit('-', 1)[-1]}",
            sources=[str(CSRC / s) for s in SOURCES],
            extra_cflags=list(CFLAGS + OPENMP),
            extra_ldflags=list(OPENMP),
            build_directory=str(out),
            verbose=verbose,
        )
    except Exception as e:  # a compiler error, a missing ninja, a broken toolchain
        last = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise BuildUnavailable(f"building the CPU MXFP4 kernels failed ({type(e).__name__}: {last}); "
                               f"`python -m gptoss_lab.cpu.build --verbose` shows the compiler's output") from e


@functools.lru_cache(maxsize=1)
def _ops() -> tuple[Any, str]:
    if os.environ.get("GPTOSS_LAB_CPU_KERNELS", "").lower() == "torch":
        return None, "GPTOSS_LAB_CPU_KERNELS=torch asks for the pure-torch fallback"
    try:
        return load_extension(), ""
    except BuildUnavailable as e:
        return None, str(e)


def ops() -> Any:
    """The loaded extension module, or ``None`` when it cannot be had (``why_not()`` says why)."""
    return _ops()[0]


def why_not() -> str:
    return _ops()[1]


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m gptoss_lab.cpu.build", description=__doc__)
    p.add_argument("--verbose", action="store_true", help="show the compiler's output")
    args = p.parse_args(argv)
    try:
        ext = load_extension(verbose=args.verbose)
    except BuildUnavailable as e:
        print(f"gptoss-lab: {e}; the CPU engine will use its pure-torch fallback", file=sys.stderr)
        return 1
    print(f"CPU MXFP4 kernels ready in {build_dir()} ({ext.isa()}; this CPU runs {', '.join(ext.available())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
