"""The CPU MXFP4 engine: gpt-oss with its experts kept packed, inside transformers' model.

On a CPU, transformers dequantizes gpt-oss's MXFP4 experts (gpt-oss-20b: ~42 GB in bf16, ~84 GB in
float32). This engine keeps them as the checkpoint stores them (4.25 bits a weight) and keeps the
dense weights in bf16, so 20b fits in about 13 GiB. The arithmetic is float32's: the dense layers
multiply in float32, and the expert kernels take each group of 32 activations as 24-bit fixed point
(a float32 mantissa's precision, scaled to the group's largest value), so that the 4-bit codes multiply
them exactly in integer dot-product instructions, half the vector work of a float lookup per weight;
the results agree with float32 arithmetic to its rounding (``set_fixed_point(False)`` runs the lookup).

We wrote the kernels (``csrc/``) because no maintained library has them: transformers' own CPU MXFP4
route needs triton, the hub's megablocks build and AVX-512-BF16; torchao's int4 is affine (lossy for
e2m1); llama.cpp's dot products round the activations to 8 bits and live outside the model. The
engine plugs into transformers' ``GptOssForCausalLM`` by swapping modules (``modules.py``), so the
model's hooks, caches and attention are transformers' own. Its norms, routers, attention and decoder
layers become subclasses of transformers' own (``layers.py``) whose forward runs a decoded token in fewer
calls into the extension (a whole decoder layer in two, where no hook would see the difference).
"""

from __future__ import annotations

from typing import Any


def engine_label(ops: Any) -> str:
    """What runs the experts, for the load report: ``mxfp4-cpu (avx512)``, ``mxfp4-cpu (torch fallback)``."""
    return f"mxfp4-cpu ({ops.isa()})" if ops is not None else "mxfp4-cpu (torch fallback)"


def expected_isa() -> str:
    """The instruction set the kernels would pick on this CPU, read from /proc/cpuinfo (no build)."""
    import platform

    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    if {"avx512f", "avx512bw", "avx512vl"} <= flags:
        return "avx512"
    if {"avx2", "fma"} <= flags:
        return "avx2"
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64") and not flags:
        return "avx2 or scalar"
    return "scalar" if machine not in ("arm64", "aarch64") else "scalar (NEON by the compiler)"
