"""Where a model's files are: ``nano``, ``tiny``, a local folder, or a Hugging Face hub id (cached or not).

Missing weights are found out before anything else, fast: with no network the answer comes in
seconds (never a hang on a download) and says where the cache is and how to fill it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import WeightsNotFoundError
from .tiny import MARKER, init_tiny

REACH_TIMEOUT = 4.0  # seconds to decide that the hub cannot be reached


@dataclass
class Source:
    asked: str
    kind: str  # "nano", "tiny", "local" or "hub"
    path: Path | None  # a local folder with the files, once they are here
    hub_id: str | None = None
    marker: dict[str, Any] | None = None  # what gptoss-lab wrote about a checkpoint it made


def hub_cache_dir() -> str:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        return str(HF_HUB_CACHE)
    except ImportError:
        return os.path.join(os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub")


def missing_files(folder: Path) -> list[str]:
    """What a checkpoint folder lacks: its config, or the weight files its index names."""
    if not (folder / "config.json").is_file():
        return ["config.json"]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [n for n in names if not (folder / n).is_file()]
    if (folder / "model.safetensors").is_file():
        return []
    return ["model.safetensors (or model.safetensors.index.json and its shards)"]


def hub_reachable(timeout: float = REACH_TIMEOUT) -> bool:
    """Whether the hub answers a TCP connection within ``timeout`` (DNS included, bounded by a thread)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = endpoint.split("://")[-1].split("/")[0]
    host, _, port = host.partition(":")
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, int(port or 443)), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return bool(result and result[0])


def tiny_dir() -> Path:
    from ..harmony.vocab import cache_dir

    return cache_dir() / "models" / "tiny-seed0"


def resolve(model: str) -> Source:
    """Find ``model``'s files, or raise :class:`WeightsNotFoundError` at once when they cannot be had."""
    if model == "nano":
        from .nano import materialize

        folder = materialize()
        return Source(model, "nano", folder, marker=json.loads((folder / MARKER).read_text()))
    if model == "tiny":
        folder = tiny_dir()
        if missing_files(folder) or not (folder / MARKER).is_file():
            init_tiny(folder)
        return Source(model, "tiny", folder, marker=json.loads((folder / MARKER).read_text()))
    local = Path(model).expanduser()
    if local.is_dir():
        missing = missing_files(local)
        if missing:
            raise WeightsNotFoundError(
                f"{local} is not a complete checkpoint: missing {', '.join(missing)}; "
                "point load() at a folder holding config.json and the safetensors weights",
                model=model,
            )
        marker = json.loads((local / MARKER).read_text()) if (local / MARKER).is_file() else None
        return Source(model, "local", local, marker=marker)
    if model.count("/") != 1 or model.startswith((".", "/", "~")):
        raise WeightsNotFoundError(
            f"{model!r} is neither a local folder, 'nano', 'tiny', nor a hub id like 'openai/gpt-oss-20b'", model=model
        )
    cached = _cached_snapshot(model)
    if cached is not None and not missing_files(cached):
        return Source(model, "hub", cached, hub_id=model)
    if not hub_reachable():
        what = "only partly in" if cached is not None else "not in"
        raise WeightsNotFoundError(
            f"{model} is {what} the Hugging Face cache ({hub_cache_dir()}) and the hub cannot be reached: "
            f"download it where there is network (`hf download {model}`) and copy that cache folder here, "
            "or pass the path of a local copy",
            model=model,
            cache_dir=hub_cache_dir(),
        )
    return Source(model, "hub", None, hub_id=model)


def cached_models() -> list[str]:
    """The official gpt-oss checkpoints complete in the Hugging Face cache."""
    from .presets import PRESETS

    out = []
    for preset in PRESETS.values():
        snap = _cached_snapshot(preset.hub_id)
        if snap is not None and not missing_files(snap):
            out.append(preset.hub_id)
    return out


def default_model() -> tuple[str, str]:
    """The model ``%gptoss load`` and ``gptoss-lab ask`` use when none is named, and why.

    With a GPU: the cached gpt-oss checkpoint, else gpt-oss-20b (downloaded). Without one: a cached
    gpt-oss checkpoint that fits this machine's memory on the CPU engine (20b needs ~14 GiB), else nano,
    the small trained model inside the package. Nothing is downloaded without a GPU.
    """
    import torch

    from .plan import detect_device, fit_message, gb, plan_moe
    from .presets import preset_for, size_of

    cached = cached_models()
    if torch.cuda.is_available():
        if cached:
            return cached[0], f"a GPU is here and {cached[0]} is in the Hugging Face cache"
        return "openai/gpt-oss-20b", "a GPU is here; no gpt-oss weights are cached, so gpt-oss-20b is downloaded"
    if not cached:
        return "nano", "no GPU and no gpt-oss weights here: nano is the small trained teaching model in the package"
    dev = detect_device("cpu")
    plan = plan_moe(dev)
    too_big = []
    for hub_id in cached:
        preset = preset_for(hub_id)
        assert preset is not None  # cached_models() lists presets only
        fits, _, need = fit_message(hub_id, size_of(preset.shape), plan, dev)
        if fits:
            return hub_id, (f"no GPU here, and {hub_id} is in the Hugging Face cache and fits this machine's memory "
                            f"on the CPU engine ({plan.moe_path}: ~{gb(need)} of {gb(dev.free_bytes)} free)")
        too_big.append(f"{hub_id} needs ~{gb(need)}")
    return "nano", (f"no GPU here, and the cached gpt-oss weights do not fit the {gb(dev.free_bytes)} free "
                    f"({'; '.join(too_big)}): nano is the small trained teaching model in the package")


def _cached_snapshot(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached (LocalEntryNotFoundError) or an unreadable cache
        return None


def read_config(source: Source) -> dict[str, Any]:
    """The model's config.json, fetched alone (kilobytes) when the weights are still on the hub."""
    if source.path is not None:
        return json.loads((source.path / "config.json").read_text())
    from huggingface_hub import hf_hub_download

    return json.loads(Path(hf_hub_download(source.hub_id or source.asked, "config.json")).read_text())


def download(source: Source) -> Path:
    """Fetch a hub model's files (with the hub's progress bars) and return the local folder."""
    from huggingface_hub import snapshot_download

    path = Path(
        snapshot_download(
            source.hub_id or source.asked,
            # Top-level files only: the hub repos also hold original/ and metal/ copies of the weights.
            allow_patterns=["config.json", "generation_config.json", "model*.safetensors", "*.index.json"],
        )
    )
    source.path = path
    return path
