"""``gptoss-lab doctor``: what this machine would do with gpt-oss-20b and gpt-oss-120b, before any
download and with no network."""

from __future__ import annotations

from typing import Any

from .plan import detect_device, fit_message, gb, plan_moe, versions
from .presets import PRESETS, size_of


def doctor(device: str = "auto") -> dict[str, Any]:
    """The doctor's findings as a JSON-able dict (top level: device, torch, ..., moe_path, models)."""
    vers = versions()
    dev = detect_device(device)
    plan = plan_moe(dev, vers)
    models = {}
    for name, preset in PRESETS.items():
        size = size_of(preset.shape)
        fits, text, need = fit_message(name, size, plan, dev)
        models[name] = {
            "hub_id": preset.hub_id,
            "params": size.params,
            "active_params": size.active_params,
            "weights_bytes_mxfp4": size.weights_bytes_mxfp4,
            "weights_bytes_bf16": size.weights_bytes_bf16,
            "weights_bytes_fp32": size.weights_bytes_fp32,
            "weights_bytes_cpu_engine": size.weights_bytes_cpu,
            "mapped_bytes_cpu_engine": size.mapped_bytes_cpu,  # of those, read from the file per row (the embedding)
            "needed_bytes": need,  # what this machine's path needs in all: weights, KV cache, runtime
            "fits": fits,
            "would_use": text,
        }
    return {
        "device": dev.as_dict(),
        "torch": vers["torch"],
        "triton": vers["triton"],
        "kernels": vers["kernels"],
        "transformers": vers["transformers"],
        "accelerate": vers["accelerate"],
        "moe_path": plan.moe_path,
        "dtype": plan.dtype,
        "why": plan.reason,
        "models": models,
    }


def render(report: dict[str, Any]) -> str:
    d = report["device"]
    lines = [
        f"device        {d['type']} ({d['name']}{', x' + str(d['count']) if d['type'] == 'cuda' and d['count'] > 1 else ''})"
        f", {gb(d['free_bytes'])} free of {gb(d['total_bytes'])}",
        "packages      " + ", ".join(f"{k} {report[k] or 'not installed'}" for k in ("torch", "triton", "kernels", "transformers")),
        f"moe_path      {report['moe_path']} ({report['dtype']})",
        f"why           {report['why']}",
        "",
    ]
    for name, m in report["models"].items():
        lines.append(
            f"{name:13s} {m['params'] / 1e9:.1f}B params ({m['active_params'] / 1e9:.1f}B active); "
            f"weights {gb(m['weights_bytes_mxfp4'])} MXFP4, {gb(m['weights_bytes_bf16'])} bf16"
        )
        lines.append(f"{'':13s} needs ~{gb(m['needed_bytes'])} here ({report['moe_path']})")
        lines.append(f"{'':13s} {'fits: ' if m['fits'] else ''}{m['would_use']}")
    return "\n".join(lines)
