"""Random-weight gpt-oss checkpoints in the official MXFP4 layout (``gptoss-lab init-tiny``).

Real weights are 13 GB and more; these checkpoints have the real architecture and the real
vocabulary (201088 tokens), with experts stored exactly as OpenAI publishes them (``*_blocks`` and
``*_scales`` uint8, ``quantization_config`` mxfp4) and everything else in bf16, so the real loading
code can be tested with no download. They generate noise: they are for testing set-ups, not answers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .mxfp4 import quantize

MARKER = "gptoss_lab.json"  # says what made the checkpoint; load() puts it in its report
MODULES_NOT_CONVERTED = ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]
GENERATION_CONFIG: dict[str, Any] = {"bos_token_id": 199998, "eos_token_id": [200002, 199999, 200012], "pad_token_id": 199999}


def tiny_config(
    *,
    layers: int = 2,
    hidden: int = 64,
    experts: int = 4,
    top_k: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int | None = None,
    intermediate: int | None = None,
    sliding_window: int = 128,
    vocab_size: int = 201088,
) -> Any:
    """A ``GptOssConfig`` of the real architecture at a small size."""
    from transformers import GptOssConfig

    if hidden % 32 or (intermediate or hidden) % 32:
        raise ValueError("MXFP4 experts need hidden and intermediate sizes that are multiples of 32")
    if not 1 <= top_k <= experts:
        raise ValueError(f"top-k must be between 1 and the number of experts ({experts}), got {top_k}")
    if heads % kv_heads:
        raise ValueError(f"the attention heads ({heads}) must be a multiple of the key/value heads ({kv_heads})")
    return GptOssConfig(
        num_hidden_layers=layers,
        num_local_experts=experts,
        num_experts_per_tok=top_k,
        hidden_size=hidden,
        intermediate_size=intermediate or hidden,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim or hidden // heads,
        sliding_window=sliding_window,
        vocab_size=vocab_size,
        max_position_embeddings=131072,
        **GENERATION_CONFIG,
    )


def preset_config(name: str) -> Any:
    """The ``GptOssConfig`` of a published model (``gpt-oss-20b``, ``gpt-oss-120b``): its full shape."""
    from transformers import GptOssConfig

    from .presets import PRESETS

    shape = PRESETS[name].shape
    return GptOssConfig(num_hidden_layers=shape.num_hidden_layers, num_local_experts=shape.num_local_experts,
                        **GENERATION_CONFIG)


def init_tiny(path: str | Path, *, seed: int = 0, shards: int = 2, **shape: Any) -> Path:
    """Write a random-weight gpt-oss checkpoint to ``path`` and return it.

    ``shape`` takes the keywords of :func:`tiny_config` (``layers``, ``hidden``, ``experts``, ``top_k``, ...).
    """
    import torch
    from safetensors.torch import save_file
    from transformers import GptOssForCausalLM

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    config = tiny_config(**shape)
    torch.manual_seed(seed)
    model = GptOssForCausalLM(config).eval()  # float32, initialised as transformers does (std 0.02)

    tensors: dict[str, torch.Tensor] = {}
    for name, param in model.state_dict().items():
        if name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj"):
            # The parameter is (E, in, out); the checkpoint stores (E, out, in) in blocks along `in`.
            blocks, scales = quantize(param.transpose(1, 2))
            tensors[f"{name}_blocks"] = blocks
            tensors[f"{name}_scales"] = scales
        else:
            tensors[name] = param.to(torch.bfloat16).contiguous()

    names = sorted(tensors)
    groups = [names[k::shards] for k in range(shards)] if shards > 1 else [names]
    weight_map = {}
    for k, group in enumerate(groups):
        file = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors" if len(groups) > 1 else "model.safetensors"
        save_file({n: tensors[n] for n in group}, str(out / file), metadata={"format": "pt"})
        weight_map.update({n: file for n in group})
    if len(groups) > 1:
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")

    _write_metadata(out, config, {"kind": "tiny", "seed": seed, "random_weights": True, **shape})
    return out


def _write_metadata(out: Path, config: Any, marker: dict[str, Any], dtype: str = "bfloat16") -> None:
    """config.json as OpenAI publishes it (quantization_config mxfp4), generation_config.json, and our marker."""
    cfg = config.to_dict()
    cfg["architectures"] = ["GptOssForCausalLM"]
    cfg["dtype"] = dtype
    cfg["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": MODULES_NOT_CONVERTED}
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    (out / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2) + "\n")
    (out / MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def write_random_checkpoint(path: str | Path, config: Any, *, seed: int = 0, device: str = "cpu") -> Path:
    """A random checkpoint of any size (gpt-oss-20b's shape included) written layer by layer.

    Unlike :func:`init_tiny` it never builds the model: expert blocks and scales are drawn directly
    (uniform E2M1 codes, scales around 2**-6 as in the published weights) and the other tensors are
    drawn in bf16 on ``device``, one layer at a time, so a 20b-shaped checkpoint needs no 84 GB of
    float32 memory. For benchmarks on machines that cannot download real weights.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import GptOssForCausalLM

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        shapes = {n: tuple(p.shape) for n, p in GptOssForCausalLM(config).state_dict().items()}
    gen = torch.Generator(device=device).manual_seed(seed)

    def normal(shape: tuple[int, ...]) -> torch.Tensor:
        return (torch.randn(shape, generator=gen, device=device, dtype=torch.float32) * 0.02).to(torch.bfloat16).cpu()

    groups: dict[str, dict[str, torch.Tensor]] = {}
    left: dict[str, int] = {}
    for name in shapes:
        group = name.split(".")[2] if name.startswith("model.layers.") else "other"
        left[group] = left.get(group, 0) + 1
    for name, shape in shapes.items():
        group = name.split(".")[2] if name.startswith("model.layers.") else "other"
        tensors = groups.setdefault(group, {})
        left[group] -= 1
        if name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj"):
            e, cin, cout = shape
            blocks = torch.randint(0, 256, (e, cout, cin // 32, 16), generator=gen, device=device, dtype=torch.int32)
            scales = torch.randint(119, 123, (e, cout, cin // 32), generator=gen, device=device, dtype=torch.int32)
            tensors[name + "_blocks"] = blocks.to(torch.uint8).cpu()
            tensors[name + "_scales"] = scales.to(torch.uint8).cpu()
        elif name.endswith("norm.weight"):
            tensors[name] = torch.ones(shape, dtype=torch.bfloat16)
        else:
            tensors[name] = normal(shape)
        if group != "other" and left[group] == 0:  # the layer is complete: write it and free it
            _save_group(out, group, tensors, save_file)
            del groups[group]
    _save_group(out, "other", groups.pop("other"), save_file)
    weight_map = {}
    total = 0
    for file in sorted(out.glob("model-*.safetensors")):
        from safetensors import safe_open

        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                weight_map[key] = file.name
        total += file.stat().st_size
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    _write_metadata(out, config, {"kind": "random", "seed": seed, "random_weights": True})
    return out


def _save_group(out: Path, group: str, tensors: dict, save_file: Any) -> None:
    name = f"model-layer{int(group):03d}.safetensors" if group != "other" else "model-other.safetensors"
    save_file(tensors, str(out / name), metadata={"format": "pt"})
