"""What this machine can run, decided before any weight is read.

On a GPU, transformers keeps gpt-oss's experts packed in MXFP4 only when the MXFP4 kernels can run:
an NVIDIA GPU of compute capability 7.5 or newer, triton >= 3.4, a ``kernels`` version that
transformers accepts, and the ``kernels-community/gpt-oss-triton-kernels`` hub kernel on hand;
otherwise it dequantizes the experts to bf16. On a CPU (Macs included: MPS would dequantize to bf16
and 20b would not fit 16 GB), an MXFP4 checkpoint runs on our engine (``gptoss_lab.cpu``), experts
packed and dense weights in bf16; ``moe="dequantized"`` asks for transformers' own path (float32,
bf16 matmuls being ~70x slower there). This module says which path a load will take and why, and
whether the model fits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from .presets import Size

MXFP4_KERNEL_REPO = "kernels-community/gpt-oss-triton-kernels"
MIN_CAPABILITY = (7, 5)
MIN_TRITON = (3, 4)
# A margin for the KV cache, activations and the allocator, on top of the weights.
OVERHEAD_FRACTION = 0.10
OVERHEAD_BYTES = 512 * 2**20
# The CPU engine's footprint is counted, not guessed: weights as held (experts packed, dense bf16, the
# small rest float32) less the embedding it maps from the file, a float32 KV cache for CPU_CONTEXT tokens,
# and the process itself (torch, the tokenizer, activations, the embedding rows a 4k-token prompt reads:
# measured by benchmarks/bench_cpu_engine.py on the 20b shape: 12.9 GiB at its peak in all).
CPU_CONTEXT = 4096
CPU_RUNTIME_BYTES = 900 * 2**20
MOE_CHOICES = ("auto", "dequantized")


def version_of(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _vtuple(v: str | None) -> tuple[int, ...]:
    if not v:
        return ()
    out = []
    for part in v.split("+")[0].split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def versions() -> dict[str, str | None]:
    """Installed versions of the packages that decide the MoE path (no heavy imports)."""
    return {p: version_of(p) for p in ("torch", "triton", "kernels", "transformers", "accelerate")}


def kernels_accepted(kernels: str | None, transformers: str | None) -> tuple[bool, str]:
    """Whether the installed transformers accepts the installed kernels, and why not."""
    if kernels is None:
        return False, "the `kernels` package is not installed"
    try:
        from transformers.utils.import_utils import KERNELS_MAX_VERSION, KERNELS_MIN_VERSION
    except ImportError:  # transformers missing or too old to say
        return False, f"transformers {transformers} does not declare which `kernels` versions it accepts"
    lo, hi = _vtuple(KERNELS_MIN_VERSION), _vtuple(KERNELS_MAX_VERSION)
    if lo <= _vtuple(kernels) < hi:
        return True, ""
    return False, (
        f"transformers {transformers} accepts kernels >={KERNELS_MIN_VERSION},<{KERNELS_MAX_VERSION}, "
        f"but kernels {kernels} is installed"
    )


def mxfp4_kernel_on_hand() -> tuple[bool, str]:
    """Whether the hub's MXFP4 kernel can be had without a download, or the hub is allowed."""
    local = os.environ.get("LOCAL_KERNELS", "")
    if MXFP4_KERNEL_REPO in local:
        return True, "from LOCAL_KERNELS"
    try:
        from huggingface_hub import scan_cache_dir

        for repo in scan_cache_dir().repos:
            if repo.repo_id == MXFP4_KERNEL_REPO:
                return True, "from the Hugging Face cache"
    except Exception:  # an absent or unreadable cache: nothing cached
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False, f"HF_HUB_OFFLINE is set and {MXFP4_KERNEL_REPO} is not cached"
    return True, "to be fetched from the hub"


@dataclass
class Device:
    type: str  # "cuda" or "cpu"
    name: str
    total_bytes: int
    free_bytes: int
    count: int = 1
    capability: tuple[int, int] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "name": self.name,
            "count": self.count,
            "total_bytes": self.total_bytes,
            "free_bytes": self.free_bytes,
            "compute_capability": list(self.capability) if self.capability else None,
        }


def _cpu_memory() -> tuple[int, int]:
    total = free = 0
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if ":" in line}
        total, free = info.get("MemTotal", 0), info.get("MemAvailable", info.get("MemFree", 0))
    except OSError:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        total = free = pages * size
    return total, free


def detect_device(device: str = "auto") -> Device:
    """The device a load would use: ``auto`` picks CUDA when torch sees a GPU, else the CPU."""
    import torch

    want = device.split(":")[0]
    if want not in ("auto", "cuda", "cpu"):
        raise ValueError(f"device must be 'auto', 'cuda', 'cuda:N' or 'cpu', not {device!r}")
    if want in ("auto", "cuda") and torch.cuda.is_available():
        ids = [int(device.split(":")[1])] if ":" in device else list(range(torch.cuda.device_count()))
        free = total = 0
        for i in ids:
            f, t = torch.cuda.mem_get_info(i)
            free, total = free + f, total + t
        return Device(
            "cuda",
            torch.cuda.get_device_name(ids[0]),
            total,
            free,
            count=len(ids),
            capability=torch.cuda.get_device_capability(ids[0]),
        )
    if want == "cuda":
        raise ValueError("device='cuda' was asked for, but torch sees no CUDA GPU (torch.cuda.is_available() is False)")
    total, free = _cpu_memory()
    return Device("cpu", _cpu_name(), total, free, count=os.cpu_count() or 1)


def _cpu_name() -> str:
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


@dataclass
class MoePlan:
    """The path the experts will take: ``mxfp4-kernels``, ``dequantized-bf16`` or ``dequantized-float32``."""

    moe_path: str
    dtype: str  # the dtype the rest of the model runs in
    reason: str
    notes: list[str] = field(default_factory=list)

    @property
    def weights_key(self) -> str:
        if self.moe_path.startswith("mxfp4-cpu"):
            return "mxfp4-cpu"
        return {"mxfp4-kernels": "mxfp4", "dequantized-bf16": "bf16"}.get(self.moe_path, "fp32")


def _cpu_engine_plan() -> MoePlan:
    from ..cpu import expected_isa
    from ..cpu.build import build_dir, compiler

    isa = expected_isa()
    built = any(build_dir().glob("*.so"))
    if built or compiler() is not None:
        how = "built" if built else "compiled into the cache on first use (about a minute)"
        return MoePlan(
            "mxfp4-cpu", "float32",
            f"on CPU, gptoss-lab's MXFP4 engine keeps the experts packed and the dense weights in bf16, "
            f"arithmetic in float32 ({isa} kernels, {how}); load(..., moe='dequantized') runs transformers' own path",
        )
    return MoePlan(
        "mxfp4-cpu (torch fallback)", "float32",
        "on CPU, gptoss-lab's MXFP4 engine keeps the experts packed; no C++ compiler was found, so its "
        "pure-torch fallback runs them (correct, several times slower: install g++ or clang for the kernels)",
    )


def plan_moe(
    dev: Device,
    vers: dict[str, str | None] | None = None,
    dtype: str | None = None,
    *,
    quantized: bool = True,
    moe: str = "auto",
) -> MoePlan:
    """Decide the MoE path for ``dev`` with the installed packages, and say why.

    ``quantized``: the checkpoint stores MXFP4 experts (every published gpt-oss does).
    ``moe``: ``"auto"``, or ``"dequantized"`` for transformers' dequantizing path.
    """
    if moe not in MOE_CHOICES:
        raise ValueError(f"moe must be one of {', '.join(map(repr, MOE_CHOICES))}, not {moe!r}")
    vers = versions() if vers is None else vers
    if dev.type == "cpu" and quantized and moe == "auto" and dtype in (None, "float32"):
        return _cpu_engine_plan()
    if dev.type == "cpu":
        dtype = dtype or "float32"
        path = "dequantized-bf16" if dtype == "bfloat16" else "dequantized-float32"
        reason = (
            "on CPU transformers dequantizes MXFP4 experts to bf16 (its MXFP4 kernels need a GPU and triton); "
            + ("they run in bf16 as asked, which is ~70x slower than float32 on CPUs without bf16 units"
               if dtype == "bfloat16" else "they then run in float32, the fast dtype on CPUs")
        )
        return MoePlan(path, dtype, reason)
    dtype = dtype or "bfloat16"
    blockers = []
    if dev.capability is not None and dev.capability < MIN_CAPABILITY:
        blockers.append(f"{dev.name} has compute capability {dev.capability[0]}.{dev.capability[1]} (< 7.5)")
    if vers.get("triton") is None:
        blockers.append("triton is not installed")
    elif _vtuple(vers["triton"]) < MIN_TRITON:
        blockers.append(f"triton {vers['triton']} is older than 3.4")
    ok, why = kernels_accepted(vers.get("kernels"), vers.get("transformers"))
    if not ok:
        blockers.append(why)
    if not blockers:
        ok, where = mxfp4_kernel_on_hand()
        if not ok:
            blockers.append(where)
    if moe == "dequantized":
        blockers.append("moe='dequantized' was asked for")
    if blockers:
        return MoePlan(
            "dequantized-bf16", dtype,
            "the MXFP4 kernels cannot run: " + "; ".join(blockers) + ", so the experts are dequantized to bf16",
        )
    return MoePlan("mxfp4-kernels", dtype, f"MXFP4 experts stay packed and run with {MXFP4_KERNEL_REPO} on {dev.name}")


def needed_bytes(size: Size, plan: MoePlan) -> int:
    if plan.weights_key == "mxfp4-cpu":
        resident = size.weights_bytes_cpu - size.mapped_bytes_cpu
        return resident + size.kv_values_per_token * 4 * CPU_CONTEXT + CPU_RUNTIME_BYTES
    weights = size.bytes_for(plan.weights_key)
    return int(weights * (1 + OVERHEAD_FRACTION)) + OVERHEAD_BYTES


def gb(n: int | float) -> str:
    return f"{n / 1e9:.1f} GB"


def fit_message(name: str, size: Size, plan: MoePlan, dev: Device) -> tuple[bool, str, int]:
    """Whether the model fits on ``dev`` with ``plan``, a sentence a person can act on, and the bytes needed."""
    need = needed_bytes(size, plan)
    where = f"{dev.type} ({dev.name})" if dev.type == "cuda" else "cpu"
    if need <= dev.free_bytes:
        return True, f"{plan.moe_path} on {where}: needs ~{gb(need)}, {gb(dev.free_bytes)} free", need
    return False, (
        f"{name} will not fit: {plan.moe_path} on {where} needs ~{gb(need)} but {gb(dev.free_bytes)} is free. "
        f"It takes ~{gb(size.weights_bytes_mxfp4)} with the MXFP4 kernels (an NVIDIA GPU of compute capability "
        f">= 7.5 with triton >= 3.4 and kernels), ~{gb(size.weights_bytes_cpu)} with gptoss-lab's CPU engine "
        f"(plus a {CPU_CONTEXT}-token KV cache), ~{gb(size.weights_bytes_bf16)} dequantized to bf16, "
        f"~{gb(size.weights_bytes_fp32)} in float32 on CPU; nano runs anywhere"
    ), need
