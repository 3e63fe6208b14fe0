"""gpt-oss-nano: the tiny trained gpt-oss shipped inside the package, and its compact file format.

The shipped checkpoint holds only the rows of the vocabulary its corpus uses (``vocab.json``: the
o200k_harmony ids, in order) plus one shared "other" row, with MXFP4 experts in the official layout
and float16 for the rest. :func:`materialize` rebuilds it, once, into an ordinary checkpoint of the
full 201088-token vocabulary (every id outside the corpus gets the "other" row), which then loads
through the same code as gpt-oss-20b. See ``gptoss_lab/models/nano/README.md`` (the model card).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from .tiny import MARKER, _write_metadata

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "models" / "nano"
WEIGHTS = "model.safetensors"
VOCAB = "vocab.json"
FULL_VOCAB = 201088
ROW_TENSORS = ("model.embed_tokens.weight", "lm_head.weight")


def is_expert(name: str) -> bool:
    return name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj")


def export(model: Any, vocab: list[int], out: str | Path, marker: dict[str, Any]) -> Path:
    """Write a model trained on the sub-vocabulary ``vocab`` (row k is id ``vocab[k]``, the last row "other")."""
    import torch
    from safetensors.torch import save_file

    from .mxfp4 import quantize

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for name, param in model.state_dict().items():
        if is_expert(name):
            blocks, scales = quantize(param.transpose(1, 2))  # stored (E, out, in) as OpenAI publishes them
            tensors[f"{name}_blocks"], tensors[f"{name}_scales"] = blocks, scales
        else:
            tensors[name] = param.detach().to(torch.float16).contiguous()
    save_file(tensors, str(out / WEIGHTS), metadata={"format": "pt"})
    (out / VOCAB).write_text(json.dumps(vocab) + "\n")
    config = model.config.to_dict()
    config["vocab_size"] = FULL_VOCAB
    from .tiny import GENERATION_CONFIG

    config.update(GENERATION_CONFIG)
    from transformers import GptOssConfig

    cfg = GptOssConfig(**{k: v for k, v in config.items() if k not in ("architectures", "transformers_version")})
    _write_metadata(out, cfg, marker, dtype="float16")
    return out


def fingerprint(folder: Path) -> str:
    h = hashlib.sha256()
    for name in (WEIGHTS, VOCAB, "config.json", MARKER):
        h.update((folder / name).read_bytes())
    return h.hexdigest()[:16]


def materialize(src: str | Path = PACKAGE_DIR, dst: str | Path | None = None) -> Path:
    """The full-vocabulary checkpoint of a compact one, written once to ``dst`` (a cache folder by default)."""
    import torch
    from safetensors.torch import load_file, save_file

    src = Path(src)
    if not (src / WEIGHTS).is_file():
        from ..errors import WeightsNotFoundError

        raise WeightsNotFoundError(f"the nano checkpoint is missing from {src}: reinstall gptoss-lab", model="nano")
    if dst is None:
        from ..harmony.vocab import cache_dir

        dst = cache_dir() / "models" / f"nano-{fingerprint(src)}"
    dst = Path(dst)
    if (dst / WEIGHTS).is_file() and (dst / MARKER).is_file():
        return dst
    tmp = dst.with_name(f"{dst.name}.partial-{os.getpid()}")  # written aside, then renamed: never half a model
    tmp.mkdir(parents=True, exist_ok=True)
    vocab = torch.tensor(json.loads((src / VOCAB).read_text()), dtype=torch.long)
    tensors = load_file(str(src / WEIGHTS))
    for name in ROW_TENSORS:
        rows = tensors[name]
        full = rows[-1:].expand(FULL_VOCAB, -1).clone()  # every id the corpus never used reads as "other"
        full[vocab] = rows[:-1]
        tensors[name] = full
    save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
    for name in ("config.json", "generation_config.json"):
        (tmp / name).write_bytes((src / name).read_bytes())
    marker = json.loads((src / MARKER).read_text())
    marker["materialized_from"] = str(src)
    (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    if dst.exists():  # an incomplete folder, or another process finished first
        shutil.rmtree(dst if not (dst / MARKER).is_file() else tmp)
    if tmp.exists():
        os.replace(tmp, dst)
    return dst
