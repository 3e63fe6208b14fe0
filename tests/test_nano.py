"""gpt-oss-nano, the trained model in the package: small, loaded like any checkpoint, and it does
its tasks for real - python runs in the sandbox, get_weather is a real function - on operands held
out of its training corpus."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

import gptoss_lab
from gptoss_lab.backends import nano as nano_ckpt
from gptoss_lab.backends.source import default_model
from nano import corpus
from nano.evaluate import items, number_in, run, summarize

EXE = str(Path(sys.executable).with_name("gptoss-lab"))


@pytest.fixture(scope="module")
def model():
    return gptoss_lab.load("nano")


@pytest.fixture(scope="module")
def python_tool():
    from gptoss_lab.tools.python_tool import PythonTool

    tool = PythonTool()
    yield tool
    tool.close()


def test_the_shipped_checkpoint_is_small_and_in_the_official_layout():
    folder = nano_ckpt.PACKAGE_DIR
    total = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    assert total <= 8_000_000, f"{total} bytes"
    config = json.loads((folder / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "mxfp4"
    assert config["vocab_size"] == 201088 and config["model_type"] == "gpt_oss"
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        blocks = f.get_tensor("model.layers.0.mlp.experts.gate_up_proj_blocks")
        assert str(blocks.dtype) == "torch.uint8" and blocks.shape[-1] == 16
        assert str(f.get_tensor("model.layers.0.self_attn.sinks").dtype) == "torch.float16"
    assert "model.layers.0.mlp.experts.gate_up_proj" not in keys
    vocab = json.loads((folder / "vocab.json").read_text())
    assert vocab == sorted(set(vocab)) and vocab[-1] < 201088
    assert {200002, 200003, 200005, 200006, 200007, 200008, 200012} <= set(vocab)  # Harmony's special tokens


def test_load_nano_rebuilds_the_full_vocabulary_and_says_what_it_is(model):
    r = model.report
    assert r.kind == "nano"
    assert any("gpt-oss-nano" in n and "teaching toy" in n for n in r.notes), r.notes
    assert not any("random weights" in n for n in r.notes)
    assert model.model.config.vocab_size == 201088
    emb = model.model.model.embed_tokens.weight
    vocab = json.loads((nano_ckpt.PACKAGE_DIR / "vocab.json").read_text())
    outside = next(t for t in range(1000, 201088) if t not in set(vocab))
    other = emb[outside]
    assert bool((emb[12345 if 12345 not in vocab else outside + 1] == other).all())  # ids it never saw share one row
    assert not bool((emb[vocab[5]] == other).all())


def test_default_model_is_nano_without_a_gpu_and_gpt_oss_with_one():
    import torch

    from gptoss_lab.backends.source import cached_models

    name, why = default_model()
    if torch.cuda.is_available():
        assert name == (cached_models() or ["openai/gpt-oss-20b"])[0] and "GPU" in why
    elif not cached_models():
        assert name == "nano" and "no GPU" in why


def fake_hub_cache(home, repo: str, files_from) -> None:
    """A Hugging Face cache holding ``repo`` (its files copied from a checkpoint folder), as hf download leaves it."""
    import shutil

    snap = home / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    for f in files_from.iterdir():
        shutil.copy(f, snap / f.name)
    (home / "hub" / f"models--{repo.replace('/', '--')}" / "refs").mkdir()
    (home / "hub" / f"models--{repo.replace('/', '--')}" / "refs" / "main").write_text("0" * 40)


def test_a_cached_20b_is_the_default_when_it_fits(tmp_path):
    import torch

    from gptoss_lab.backends import plan
    from gptoss_lab.backends.presets import PRESETS, size_of
    from gptoss_lab.backends.tiny import init_tiny

    # the choice reads the cache and the 20b preset's size, not the weights: a small checkpoint stands in for its files
    fake_hub_cache(tmp_path, "openai/gpt-oss-20b", init_tiny(tmp_path / "ckpt", shards=1))
    code = "import json; from gptoss_lab.backends.source import default_model; print(json.dumps(default_model()))"
    env = {**__import__("os").environ, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}  # read at import: a new process
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    name, why = json.loads(out.stdout.strip().splitlines()[-1])
    if torch.cuda.is_available():
        assert name == "openai/gpt-oss-20b" and "GPU" in why
        return
    dev = plan.detect_device("cpu")
    need = plan.needed_bytes(size_of(PRESETS["gpt-oss-20b"].shape), plan.plan_moe(dev))
    if need <= dev.free_bytes:  # this machine kind: 24 GiB
        assert name == "openai/gpt-oss-20b" and "fits this machine's memory on the CPU engine" in why
    else:
        assert name == "nano" and "do not fit" in why and "openai/gpt-oss-20b needs" in why


def test_ask_answers_held_out_arithmetic_through_the_sandbox():
    rng = random.Random(7)
    a, b = corpus.operands(rng, train=False)
    assert corpus.held_out(a, b)
    p = subprocess.run([EXE, "ask", f"What is {a}*{b}?", "--tools", "python", "--json", "--seed", "0"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "using nano" in p.stderr  # no --model: the default, and it says so
    t = json.loads(p.stdout)
    calls = [m for m in t["messages"] if m["recipient"] == "python"]
    replies = [m for m in t["messages"] if m["role"] == "tool"]
    assert calls and calls[0]["content"].strip() == f"print({a}*{b})"
    assert replies[0]["content"].strip() == str(a * b)  # the sandbox really ran it
    final = [m for m in t["messages"] if m["channel"] == "final"][-1]["content"]
    assert number_in(final, a * b), final
    assert t["complete"] and not t["errors"]


def test_nano_is_right_on_held_out_tool_tasks(model, python_tool):
    rows = [run(model, item, effort, python_tool, temperature=1.0, seed=k)
            for k, item in enumerate(items(8, 4, 0, seed=99)) for effort in ("medium",)]
    s = summarize(rows)
    assert s["well_formed"] >= 0.9, rows
    assert s["tool_answers_right"] >= 0.8, [(r["prompt"], r["final"]) for r in rows if not r["right"]]


def test_weather_is_a_constrained_json_call_with_the_city_copied(model):
    temps = {"Lisbon": 27, "Oslo": -4}

    @gptoss_lab.tool
    def get_weather(city: str) -> dict:
        """Get the current weather in a city."""
        return {"city": city, "temperature": temps[city]}

    for city, t in temps.items():
        chat = gptoss_lab.Chat(model, reasoning="low", tools=[get_weather])
        r = chat.send(f"What's the weather in {city}?", seed=1)
        call = next(m for m in r.messages if m["recipient"] == "functions.get_weather")
        assert call["content_type"] == "<|constrain|>json" and json.loads(call["content"]) == {"city": city}
        assert number_in(r.final, t), r.final


def test_high_effort_thinks_longer_than_low(model, python_tool):
    chosen = items(3, 2, 3, seed=5)
    by_effort = {}
    for effort in ("low", "high"):
        rows = [run(model, item, effort, python_tool, temperature=1.0, seed=k) for k, item in enumerate(chosen)]
        by_effort[effort] = summarize(rows)["analysis_tokens_by_effort"][effort]
    assert by_effort["high"] > 1.5 * by_effort["low"], by_effort


def test_capitals_come_from_its_table_without_tools(model):
    chat = gptoss_lab.Chat(model, reasoning="medium")
    r = chat.send("What is the capital of Kenya?", seed=0)
    assert "Nairobi" in (r.final or "") and not r.tool_results


def test_the_corpus_sends_what_chat_sends_and_never_a_held_out_pair(enc):
    import re

    from gptoss_lab.harmony import conversation as conv

    chat = gptoss_lab.Chat(None, reasoning="high", tools=["python", corpus.weather_tool(False)], current_date="2026-11-28")
    try:
        assert conv.render_conversation(chat.header_messages(), encoding=enc) == conv.render_conversation(
            corpus.header("high", "2026-11-28", python=True, weather=1), encoding=enc)
    finally:
        chat.close()
    rng = random.Random(0)
    seen = 0
    for _ in range(60):
        ids, mask = corpus.sequence(enc, rng)
        text = enc.decode(ids)
        for a, b in re.findall(r"print\((\d+)[*+-](\d+)\)", text):
            assert not corpus.held_out(int(a), int(b))
            seen += 1
        trained = enc.decode([t for t, m in zip(ids, mask) if m])
        assert "<|start|>user" not in trained and "to=assistant" not in trained  # only the model's own tokens
        assert trained.count("<|return|>") >= 1
    assert seen > 50
