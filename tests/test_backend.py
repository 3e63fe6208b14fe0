"""The transformers backend on a random-weight checkpoint in the official MXFP4 layout: the real loading
code, the real transformers model, checked against the model itself."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest
import torch
from safetensors import safe_open

from gptoss_lab.backends import mxfp4
from gptoss_lab.backends.tiny import init_tiny
from gptoss_lab.backends.transformers_backend import STOP_TOKENS, load
from gptoss_lab.errors import ModelDoesNotFitError, WeightsNotFoundError

from .spec_mxfp4 import spec_decode

PROMPT = [200006, 17360, 200008, 3575, 553, 17554, 162016, 11, 261, 4410, 6439, 2359, 22203, 656, 7788, 17527]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return init_tiny(tmp_path_factory.mktemp("tiny"), seed=3)


@pytest.fixture(scope="module")
def m(tiny_dir):
    # transformers' own path, experts dequantized (the CPU engine's default is tested in test_cpu_engine.py)
    return load(str(tiny_dir), moe="dequantized")


def test_checkpoint_has_the_official_layout(tiny_dir):
    cfg = json.loads((tiny_dir / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "mxfp4"
    assert cfg["vocab_size"] == 201088 and cfg["model_type"] == "gpt_oss"
    index = json.loads((tiny_dir / "model.safetensors.index.json").read_text())["weight_map"]
    blocks = [k for k in index if k.endswith("_blocks")]
    assert "model.layers.0.mlp.experts.gate_up_proj_blocks" in blocks
    with safe_open(str(tiny_dir / index["model.layers.0.mlp.experts.gate_up_proj_blocks"]), "pt") as f:
        b = f.get_tensor("model.layers.0.mlp.experts.gate_up_proj_blocks")
    with safe_open(str(tiny_dir / index["model.layers.0.mlp.experts.gate_up_proj_scales"]), "pt") as f:
        s = f.get_tensor("model.layers.0.mlp.experts.gate_up_proj_scales")
    # (E, rows=2*intermediate, cols/32, 16) and (E, rows, cols/32), uint8
    assert b.dtype == s.dtype == torch.uint8
    assert tuple(b.shape) == (cfg["num_local_experts"], 2 * cfg["intermediate_size"], cfg["hidden_size"] // 32, 16)
    assert tuple(s.shape) == tuple(b.shape[:-1])
    assert not any(k.endswith("experts.gate_up_proj") for k in index)


def test_report_says_what_ran(m, tiny_dir):
    r = m.report
    assert r.device == "cpu" and r.dtype == "float32"
    assert r.moe_path == "dequantized-float32" and r.attn_implementation == "eager"
    assert r.params == sum(p.numel() for p in m.model.parameters())
    assert r.memory_bytes == m.model.get_memory_footprint() > 0
    assert 0 < r.load_seconds < 120
    assert any("dequantizes MXFP4 experts" in n for n in r.notes)  # our reason
    assert any("random weights" in n for n in r.notes)
    d = r.as_dict()
    assert set(d) >= {"device", "dtype", "moe_path", "attn_implementation", "params", "memory_bytes", "load_seconds", "notes"}
    text = str(r)
    assert "moe_path   dequantized-float32" in text and "attention  eager" in text
    assert json.loads(json.dumps(d)) == d
    experts = m.model.model.layers[0].mlp.experts
    assert experts.gate_up_proj.dtype == torch.float32  # float32 on CPU, not the bf16 transformers leaves


def test_spec_decoder_gives_exactly_the_weights_load_uses(m, tiny_dir):
    index = json.loads((tiny_dir / "model.safetensors.index.json").read_text())["weight_map"]
    for layer, proj in [(0, "gate_up_proj"), (1, "down_proj")]:
        key = f"model.layers.{layer}.mlp.experts.{proj}"
        with safe_open(str(tiny_dir / index[key + "_blocks"]), "pt") as f:
            blocks = f.get_tensor(key + "_blocks")
        with safe_open(str(tiny_dir / index[key + "_scales"]), "pt") as f:
            scales = f.get_tensor(key + "_scales")
        used = getattr(m.model.model.layers[layer].mlp.experts, proj).detach()  # (E, in, out)
        for e in range(blocks.shape[0]):
            for row in range(0, blocks.shape[1], 7):  # every 7th output row, through the scalar decoder
                assert used[e, :, row].tolist() == spec_decode(blocks[e, row], scales[e, row])
        assert torch.equal(used, mxfp4.dequantize(blocks, scales).transpose(1, 2))


def test_plain_transformers_loads_the_checkpoint(tiny_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_dir))
    assert type(model).__name__ == "GptOssForCausalLM"
    assert model.config.vocab_size == 201088


def test_greedy_stream_equals_generate(m):
    m.reset()
    steps = list(m.stream(PROMPT, max_tokens=96, temperature=0))
    with torch.inference_mode():
        out = m.model.generate(
            torch.tensor([PROMPT]), max_new_tokens=96, do_sample=False, eos_token_id=sorted(STOP_TOKENS), pad_token_id=199999
        )
    assert [s.token for s in steps] == out[0, len(PROMPT):].tolist()
    assert len(steps) == 96  # random weights never say <|return|> here: max_tokens ended it


def test_stop_token_is_the_last_step(m):
    m.reset()
    first = next(iter(m.stream(PROMPT, max_tokens=1, temperature=0))).token
    head = m.model.lm_head.weight
    saved = head[200002].detach().clone()
    try:
        with torch.no_grad():
            head[200002] = head[first] * 3  # make <|return|> the model's clear choice after `first`
        m.reset()
        steps = list(m.stream(PROMPT + [first], max_tokens=50, temperature=0))
    finally:
        with torch.no_grad():
            head[200002] = saved
    assert steps[-1].token == 200002 and len(steps) < 50
    assert 200002 not in [s.token for s in steps[:-1]]


def test_cancel_stops_within_one_token(m):
    stop = threading.Event()
    seen = []
    for step in m.stream(PROMPT, max_tokens=200, temperature=0):
        seen.append(step.token)
        if len(seen) == 5:
            stop.set()
        if stop.is_set():
            break
    assert len(seen) == 5
    got = []
    for step in m.stream(PROMPT, max_tokens=200, temperature=0, cancel=lambda: len(got) >= 3):
        got.append(step)
    assert len(got) == 3


def test_logprobs_are_the_models_log_softmax(m):
    m.reset()
    steps = list(m.stream(PROMPT, max_tokens=6, temperature=0, logprobs=5))
    ids = PROMPT + [s.token for s in steps]
    with torch.inference_mode():
        logits = m.model(torch.tensor([ids])).logits[0]
    logp = torch.log_softmax(logits.float(), dim=-1)
    for i, s in enumerate(steps):
        row = logp[len(PROMPT) - 1 + i]
        assert s.logprob == pytest.approx(row[s.token].item(), abs=1e-4)
        assert [t for t, _ in s.alternatives] == torch.topk(row, 5).indices.tolist()
        assert s.alternatives[0][0] == s.token  # greedy: the chosen token is the most likely one
        assert all(a[1] >= b[1] for a, b in zip(s.alternatives, s.alternatives[1:]))


def test_routing_is_the_routers_own_choice(m):
    m.reset()
    steps = list(m.stream(PROMPT, max_tokens=8, temperature=0, routing=True))
    assert steps[-1].routing is None  # the last token was never fed to the model
    ids = PROMPT + [s.token for s in steps]
    seen = {}
    hooks = [
        layer.mlp.router.register_forward_hook(lambda mod, inp, out, i=i: seen.__setitem__(i, out))
        for i, layer in enumerate(m.model.model.layers)
    ]
    try:
        with torch.inference_mode():
            m.model(torch.tensor([ids]))
    finally:
        for h in hooks:
            h.remove()
    for i, s in enumerate(steps[:-1]):
        pos = len(PROMPT) + i
        assert len(s.routing) == len(m.model.model.layers)
        for layer, (experts, weights) in enumerate(s.routing):
            _, scores, indices = seen[layer]
            assert list(experts) == indices[pos].tolist()
            assert weights == pytest.approx(scores[pos].tolist(), abs=1e-5)
            assert sum(weights) == pytest.approx(1.0, abs=1e-5)
    assert all(not layer.mlp._forward_pre_hooks for layer in m.model.model.layers)  # removed afterwards


def test_no_hooks_and_no_extras_when_off(m):
    steps = list(m.stream(PROMPT, max_tokens=3, temperature=0))
    assert all(s.logprob is None and s.routing is None and s.alternatives == () for s in steps)
    assert all(not layer.mlp._forward_pre_hooks for layer in m.model.model.layers)


def test_sampling_is_seeded(m):
    a = [s.token for s in m.stream(PROMPT, max_tokens=12, temperature=1.0, seed=7)]
    b = [s.token for s in m.stream(PROMPT, max_tokens=12, temperature=1.0, seed=7)]
    c = [s.token for s in m.stream(PROMPT, max_tokens=12, temperature=1.0, seed=8)]
    assert a == b and a != c
    greedy = [s.token for s in m.stream(PROMPT, max_tokens=12, temperature=0)]
    assert [s.token for s in m.stream(PROMPT, max_tokens=12, temperature=1.0, top_p=1e-9, seed=1)] == greedy


def test_prefix_cache_prefills_only_what_is_new(m):
    m.reset()
    out = [s.token for s in m.stream(PROMPT, max_tokens=10, temperature=0)]
    tool_reply = [200006, 29010, 316, 28, 173781, 200008, 19, 200007, 200006, 173781]
    follow = PROMPT + out + tool_reply
    cont = list(m.stream(follow, max_tokens=5, temperature=0, logprobs=3))
    assert m.last_prefill == {"cached": len(PROMPT) + len(out) - 1, "prefilled": len(tool_reply) + 1}
    m.reset()
    cold = list(m.stream(follow, max_tokens=5, temperature=0, logprobs=3))
    assert m.last_prefill == {"cached": 0, "prefilled": len(follow)}
    assert [s.token for s in cont] == [s.token for s in cold]
    for a, b in zip(cont, cold):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)


def test_prefix_cache_logits_match_a_fresh_pass_past_the_sliding_window(m):
    # 300 tokens: beyond the 128-token window of the sliding layers, then a divergent prompt.
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 199998, (300,), generator=g).tolist()
    with torch.inference_mode():
        fresh = m.model(torch.tensor([ids])).logits[0, -1]
    m.reset()
    m.prefill(ids[:200])
    assert torch.allclose(m.prefill(ids), fresh, atol=1e-4)
    m.prefill(ids[:250] + [11, 12, 13])  # diverges at 250: the cache is cut back, not rebuilt
    assert m.last_prefill == {"cached": 250, "prefilled": 3}
    assert torch.allclose(m.prefill(ids), fresh, atol=1e-4)
    assert m.last_prefill == {"cached": 250, "prefilled": 50}


def test_stop_during_a_long_prompt_keeps_the_chunks_fed_whole(m, monkeypatch):
    # A prompt fed 64 tokens at a time (a CPU feeds 1024: minutes for 20b on a laptop) and a Stop that
    # comes in the third chunk's second decoder layer: the stream ends there, with nothing generated.
    from gptoss_lab.backends import transformers_backend

    monkeypatch.setattr(transformers_backend, "CPU_PREFILL_CHUNK", 64)
    layers = len(m.model.model.layers)
    ids = torch.randint(0, 199998, (300,), generator=torch.Generator().manual_seed(3)).tolist()
    checks = []
    m.reset()
    assert list(m.stream(ids, max_tokens=5, temperature=0, cancel=lambda: checks.append(1) or len(checks) > 2 + 2 * layers)) == []
    assert len(checks) == 3 + 2 * layers  # once before the prompt, then once a layer until the Stop
    # The two chunks fed whole stay cached; the stopped one left no trace in any layer of the cache.
    resumed = list(m.stream(ids, max_tokens=5, temperature=0, logprobs=2))
    assert m.last_prefill == {"cached": 128, "prefilled": 172}
    m.reset()
    fresh = list(m.stream(ids, max_tokens=5, temperature=0, logprobs=2))
    assert [s.token for s in resumed] == [s.token for s in fresh]
    for a, b in zip(resumed, fresh):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)


def test_bad_arguments(m):
    with pytest.raises(ValueError, match="at least one prompt token"):
        list(m.stream([]))
    with pytest.raises(ValueError, match="max_tokens"):
        list(m.stream(PROMPT, max_tokens=0))
    it = m.stream(PROMPT, max_tokens=5, temperature=0)
    next(it)
    with pytest.raises(RuntimeError, match="already streaming"):
        next(m.stream(PROMPT))
    it.close()
    assert len(list(m.stream(PROMPT, max_tokens=2))) == 2  # usable again


def test_a_model_that_does_not_fit_is_refused_before_any_weight_is_read(tiny_dir, tmp_path):
    big = tmp_path / "looks-like-120b"
    shutil.copytree(tiny_dir, big)
    cfg = json.loads((big / "config.json").read_text())
    cfg.update(num_hidden_layers=36, num_local_experts=128, hidden_size=2880, intermediate_size=2880,
               num_attention_heads=64, num_key_value_heads=8, head_dim=64)
    (big / "config.json").write_text(json.dumps(cfg))
    for shard in big.glob("*.safetensors"):
        shard.write_bytes(b"not weights")  # reading them would fail with a different error
    with pytest.raises(ModelDoesNotFitError) as err:
        load(str(big))
    msg = str(err.value)
    assert "will not fit" in msg and "65.2 GB with the MXFP4 kernels" in msg and "233.7 GB dequantized to bf16" in msg
    assert err.value.needed_bytes > err.value.available_bytes


def test_missing_tensors_are_reported_not_hidden(tiny_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    index_path = broken / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    gone = "model.layers.1.post_attention_layernorm.weight"
    shard = broken / index["weight_map"].pop(gone)
    tensors = load_file(str(shard))
    del tensors[gone]
    save_file(tensors, str(shard), metadata={"format": "pt"})
    index_path.write_text(json.dumps(index))
    notes = load(str(broken), moe="dequantized").report.notes
    assert any("lacks 1 tensors" in n and gone in n and "at random" in n for n in notes)
    with pytest.raises(WeightsNotFoundError, match=f"1 tensors are missing \\({gone}\\)"):
        load(str(broken))  # the CPU engine never leaves a weight at random


def test_a_folder_without_weights_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(WeightsNotFoundError, match="missing model.safetensors"):
        load(str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match="neither a local folder"):
        load("no-such-model")


def test_hub_model_with_no_network_and_no_cache_fails_fast(tmp_path, offline):
    code = (
        "import gptoss_lab.backends.transformers_backend as b\n"
        "try:\n    b.load('openai/gpt-oss-20b')\n"
        "except Exception as e:\n    print(type(e).__name__); print(e)\n"
    )
    env = {"PATH": os.environ["PATH"], "HF_HOME": str(tmp_path / "hf"), "HOME": str(tmp_path)}
    t0 = time.monotonic()
    out = subprocess.run([*offline, sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60)
    elapsed = time.monotonic() - t0
    assert elapsed < 30
    kind, message = out.stdout.strip().split("\n", 1)
    assert kind == "WeightsNotFoundError"
    assert "\n" not in message  # one line
    assert "openai/gpt-oss-20b" in message and str(tmp_path / "hf" / "hub") in message
    assert "hf download openai/gpt-oss-20b" in message


def test_load_tiny_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTOSS_LAB_CACHE_DIR", str(tmp_path))
    model = load("tiny")
    assert model.report.kind == "tiny"
    assert (tmp_path / "models" / "tiny-seed0" / "gptoss_lab.json").is_file()
    assert len(list(model.stream(PROMPT, max_tokens=3))) == 3
