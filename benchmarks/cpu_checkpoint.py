"""The gpt-oss-20b-shaped random checkpoint the CPU-engine benchmark runs on, made once into the cache.

24 layers, 32 experts, the official names and layout (``*_blocks``/``*_scales`` uint8 experts, bf16
rest), written layer by layer by ``gptoss_lab.backends.tiny.write_random_checkpoint`` (13 GB on disk,
a few minutes). Keyed by a version: bump it when the generator changes.
"""

from __future__ import annotations

from pathlib import Path

VERSION = 1


def folder(shape: str = "20b") -> Path:
    from gptoss_lab.harmony.vocab import cache_dir

    return cache_dir() / "bench" / f"gpt-oss-{shape}-random-v{VERSION}"


def ensure(shape: str = "20b") -> Path:
    """The checkpoint's folder, written first if missing (what `gptoss-lab init-tiny --preset` writes)."""
    from gptoss_lab.backends.tiny import preset_config, write_random_checkpoint

    out = folder(shape)
    if (out / "model.safetensors.index.json").exists():
        return out
    tmp = out.with_name(out.name + ".partial")
    write_random_checkpoint(tmp, preset_config(f"gpt-oss-{shape}"))
    tmp.rename(out)
    return out


if __name__ == "__main__":
    print(ensure())
