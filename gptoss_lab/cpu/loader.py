"""Loading an MXFP4 gpt-oss checkpoint for the CPU engine, experts never dequantized.

The skeleton is transformers' own ``GptOssForCausalLM``, built on the meta device (no memory); each
tensor is then read once from the safetensors shards into its final buffer and the modules that hold the
big weights are swapped for ``modules.py``'s. We read the shards with plain file reads rather than
safetensors' memory map: mapped pages that have been read count as resident until the map closes, and
a 4-GB shard mapped beside its copy would push a 20b load past the 14 GiB it otherwise fits in. The one
exception is the token embedding, which is only looked up, a row per token: its 1.16 GB stay in the file,
mapped (copy-on-write) for whoever inspects it and read a row at a time by the lookup (``DenseEmbedding``).

Big tensors get memory of their own from an anonymous map marked for transparent huge pages where the
kernel offers them (Linux, ``madvise`` mode included): a decoded token streams 3.7 GB of weights spread
over 13 GB, and with 4-KB pages nearly every page it touches is a TLB miss whose page walk goes to DRAM
(twice over in a virtual machine); with 2-MB pages the experts ran 20-30% faster here.
"""

from __future__ import annotations

import json
import mmap
import re
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import WeightsNotFoundError
from .modules import DenseEmbedding, DenseLinear, PackedExperts

DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "U8": torch.uint8,
          "I8": torch.int8, "I32": torch.int32, "I64": torch.int64, "BOOL": torch.bool}
EXPERT = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.((?:gate_up|down)_proj_(?:blocks|scales|bias))$")
LINEAR = re.compile(r"(model\.layers\.\d+\.self_attn\.[qkvo]_proj)\.(weight|bias)$")
EXPERT_PARTS = 6
HUGE_PAGE = 2 << 20  # tensors at least this big are placed on transparent huge pages


def weight_memory(nbytes: int) -> torch.Tensor:
    """``nbytes`` of uint8 memory for a weight: huge pages where offered, else torch's allocator."""
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if nbytes < HUGE_PAGE or advice is None:
        return torch.empty(nbytes, dtype=torch.uint8)
    region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        region.madvise(advice)  # before the first touch, so the pages are huge from the start
    except OSError:  # a kernel built without THP: plain pages, same memory
        pass
    return torch.frombuffer(region, dtype=torch.uint8)  # the tensor holds the map open


def shard_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / n for n in names]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise WeightsNotFoundError(f"no .safetensors files in {folder}", model=str(folder))
    return files


def shard_header(path: Path) -> tuple[dict[str, Any], int]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


def mapped(f: Any, offset: int, nbytes: int) -> torch.Tensor | None:
    """``nbytes`` of the open file ``f`` from ``offset``, memory-mapped copy-on-write (``None`` if it can't be)."""
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    try:
        region = mmap.mmap(f.fileno(), offset + nbytes - start, access=mmap.ACCESS_COPY, offset=start)
    except (OSError, ValueError):  # a file system without mmap: read it like the rest
        return None
    return torch.frombuffer(region, dtype=torch.uint8, count=nbytes, offset=offset - start)


def read_shard(path: Path, lookups: frozenset[str] = frozenset()) -> Iterator[tuple[str, torch.Tensor, int | None]]:
    """Each tensor of one shard, in file order, read into memory of its own; ``lookups`` are mapped instead
    where the file system allows (the third item is then the tensor's offset in the file)."""
    header, base = shard_header(path)
    with open(path, "rb", buffering=0) as f:
        for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            start, end = info["data_offsets"]
            if name in lookups and (region := mapped(f, base + start, end - start)) is not None:
                yield name, region.view(DTYPES[info["dtype"]]).reshape(info["shape"]), base + start
                continue
            buf = weight_memory(end - start)
            f.seek(base + start)
            view = memoryview(buf.numpy())  # type: ignore[arg-type]  # numpy arrays are buffers
            got = 0
            while got < len(view):
                n = f.readinto(view[got:])
                if not n:
                    raise WeightsNotFoundError(f"{path.name} is truncated at {name}", model=str(path.parent))
                got += n
            yield name, buf.view(DTYPES[info["dtype"]]).reshape(info["shape"]), None


def _set_param(model: nn.Module, name: str, value: torch.Tensor) -> None:
    owner, _, leaf = name.rpartition(".")
    module = model.get_submodule(owner)
    module._parameters[leaf] = nn.Parameter(value.float(), requires_grad=False)


def _skeleton(folder: Path, attn_implementation: str) -> Any:
    from transformers import AutoConfig, GptOssForCausalLM
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssRotaryEmbedding

    config = AutoConfig.from_pretrained(str(folder))
    if attn_implementation == "eager":  # eager's math, bounded in memory (attention.py)
        from .attention import register

        attn_implementation = register()
    config._attn_implementation = attn_implementation
    with torch.device("meta"):
        model = GptOssForCausalLM(config)
    model.model.rotary_emb = GptOssRotaryEmbedding(config)  # its buffers are computed, not loaded
    try:
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(str(folder))
    except OSError:  # no generation_config.json: transformers' defaults
        pass
    return model


def _in_kernel() -> bool:
    """True in a Jupyter kernel (an IPython shell with a kernel attached)."""
    shell = sys.modules.get("IPython") and getattr(sys.modules["IPython"], "get_ipython", lambda: None)()
    return getattr(shell, "kernel", None) is not None


def load_model(folder: str | Path, ops: Any, *, attn_implementation: str = "eager", progress: bool = True) -> Any:
    """A ``GptOssForCausalLM`` on the CPU with packed MXFP4 experts and bf16 dense weights.

    ``ops`` is the C++ extension, or ``None`` for the pure-torch fallback.
    """
    from tqdm import tqdm  # text, not tqdm.auto's widget: a saved notebook would say "Loading widget..."

    folder = Path(folder)
    model = _skeleton(folder, attn_implementation)
    config = model.config
    files = shard_files(folder)
    total = sum(info["data_offsets"][1] - info["data_offsets"][0] for p in files for info in shard_header(p)[0].values())
    experts: dict[int, dict[str, torch.Tensor]] = {}
    linears: dict[str, dict[str, torch.Tensor]] = {}
    layers = model.model.layers
    # Mapped, not read (see above), unless tied to the unembedding, which reads it whole every token.
    lookups = frozenset() if config.tie_word_embeddings else frozenset({"model.embed_tokens.weight"})
    # In a notebook on stdout (the cell shows stderr as a warning, in pink, and this is none); elsewhere on
    # stderr, so that a CLI's stdout holds only its JSON.
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="Loading MXFP4 weights (kept packed)", disable=not progress,
               file=sys.stdout if _in_kernel() else sys.stderr)
    try:
        for path in files:
            for name, t, offset in read_shard(path, lookups):
                bar.update(t.numel() * t.element_size())
                if m := EXPERT.match(name):
                    i = int(m.group(1))
                    parts = experts.setdefault(i, {})
                    parts[m.group(2)] = t
                    if len(parts) == EXPERT_PARTS:
                        layers[i].mlp.experts = PackedExperts(experts.pop(i), config.swiglu_alpha, config.swiglu_limit, ops)
                elif m := LINEAR.match(name):
                    parts = linears.setdefault(m.group(1), {})
                    parts[m.group(2)] = t
                    if len(parts) == 2:
                        p = linears.pop(m.group(1))
                        owner, _, leaf = m.group(1).rpartition(".")
                        setattr(model.get_submodule(owner), leaf, DenseLinear(p["weight"], p["bias"], ops))
                elif name == "model.embed_tokens.weight":
                    where = None if offset is None else (path, offset)
                    model.model.embed_tokens = DenseEmbedding(t, config.pad_token_id, file=where)
                    if config.tie_word_embeddings:
                        model.lm_head = DenseLinear(t, None, ops)
                elif name == "lm_head.weight":
                    model.lm_head = DenseLinear(t, None, ops)
                else:
                    _set_param(model, name, t)
    finally:
        bar.close()
    missing = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    missing += [f"model.layers.{i}.mlp.experts.*" for i in sorted(experts)]
    missing += [f"{n}.*" for n in linears]
    missing += [f"model.layers.{i}.mlp.experts" for i, layer in enumerate(layers) if not isinstance(layer.mlp.experts, PackedExperts)]
    if missing:
        raise WeightsNotFoundError(
            f"{folder} is not a complete MXFP4 gpt-oss checkpoint: {len(missing)} tensors are missing "
            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})", model=str(folder))
    from .layers import swap

    swap(model, ops)  # a decoded token's norms, routers, attention and decoder layers in fewer calls
    return model.eval()
