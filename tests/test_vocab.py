"""The Harmony encoding loads offline, from the packaged vocabulary, checked by sha256."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import openai_harmony

import gptoss_lab
from gptoss_lab.harmony import vocab


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_encoding_is_openai_harmonys_own_object():
    enc = gptoss_lab.encoding()
    assert type(enc) is openai_harmony.HarmonyEncoding
    assert enc is gptoss_lab.encoding()
    assert enc.name == "HarmonyGptOss"
    assert sorted(enc.stop_tokens_for_assistant_actions()) == [200002, 200012]
    assert enc.decode_utf8(enc.encode("Grüße, 世界")) == "Grüße, 世界"


LOAD = (
    "import json, os, gptoss_lab; enc = gptoss_lab.encoding(); "
    "print(json.dumps({'ids': enc.encode('hello <|start|>', allowed_special='all'), "
    "'env': os.environ.get('TIKTOKEN_ENCODINGS_BASE')}))"
)


def test_loads_with_an_empty_cache_and_leaves_the_environment_alone(tmp_path):
    env = {"PATH": os.environ["PATH"], "GPTOSS_LAB_CACHE_DIR": str(tmp_path / "cache")}
    out = run_python(LOAD, env)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["ids"] == gptoss_lab.encoding().encode("hello <|start|>", allowed_special="all")
    assert result["env"] is None  # the variable was only set while openai-harmony loaded
    cached = tmp_path / "cache" / "vocab" / vocab.VOCAB_FILE
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == vocab.VOCAB_SHA256


def test_a_corrupted_cache_is_replaced(tmp_path):
    cached = tmp_path / "vocab" / vocab.VOCAB_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not a vocabulary\n")
    out = run_python(LOAD, {"PATH": os.environ["PATH"], "GPTOSS_LAB_CACHE_DIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == vocab.VOCAB_SHA256


def test_an_unusable_cache_falls_back_to_the_temp_dir(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    env = {"PATH": os.environ["PATH"], "GPTOSS_LAB_CACHE_DIR": str(blocker / "cache"), "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    out = run_python(LOAD, env)
    assert out.returncode == 0, out.stderr
    assert list((tmp_path / "tmp").glob(f"gptoss-lab-*/vocab/{vocab.VOCAB_FILE}"))


def test_a_set_tiktoken_encodings_base_is_respected(tmp_path):
    own = tmp_path / "mine"
    own.mkdir()
    (own / vocab.VOCAB_FILE).write_bytes((Path(vocab.vocab_dir()) / vocab.VOCAB_FILE).read_bytes())
    env = {"PATH": os.environ["PATH"], "TIKTOKEN_ENCODINGS_BASE": str(own), "GPTOSS_LAB_CACHE_DIR": str(tmp_path / "c")}
    out = run_python(LOAD, env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["env"] == str(own)
    assert not (tmp_path / "c").exists()  # nothing unpacked: the user's folder was used


def test_cache_dir_order(monkeypatch, tmp_path):
    monkeypatch.delenv("GPTOSS_LAB_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert vocab.cache_dir() == tmp_path / "xdg" / "gptoss-lab"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert vocab.cache_dir() == tmp_path / "home" / ".cache" / "gptoss-lab"
    monkeypatch.delenv("HOME")
    assert vocab.cache_dir().name.startswith("gptoss-lab-")
    monkeypatch.setenv("GPTOSS_LAB_CACHE_DIR", str(tmp_path / "explicit"))
    assert vocab.cache_dir() == tmp_path / "explicit"


def test_import_is_cheap():
    out = run_python(
        "import sys, gptoss_lab; print(sorted(m for m in ('openai_harmony', 'torch', 'IPython', 'transformers') if m in sys.modules))",
        {"PATH": os.environ["PATH"]},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
