"""The CPU MXFP4 engine: its kernels against the MX spec's decoder, its modules against transformers'
own, and whole models against transformers' dequantized float32 path."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from gptoss_lab.backends import mxfp4
from gptoss_lab.backends.tiny import tiny_config, write_random_checkpoint
from gptoss_lab.backends.transformers_backend import load
from gptoss_lab.cpu import attention, build, modules

from .spec_mxfp4 import spec_decode

OPS = build.ops()
ISAS = list(OPS.available()) if OPS is not None else []
PROMPT = [200006, 17360, 200008, 3575, 553, 17554, 162016, 11, 261, 4410, 6439, 2359, 22203, 656, 7788, 17527]


def test_the_kernels_build_on_this_machine():
    from gptoss_lab.backends.transformers_backend import CPU_ATTENTION

    assert OPS is not None, build.why_not()
    assert OPS.isa() in ISAS and "scalar" in ISAS
    assert attention.NAME == CPU_ATTENTION


@pytest.fixture(params=ISAS)
def isa(request):
    OPS.set_isa(request.param)
    yield request.param
    OPS.set_isa("best")


def packed(rows: int, cols: int, seed: int, lo: int = 118, hi: int = 132) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, 256, (rows, cols // 32, 16), generator=g, dtype=torch.uint8)
    scales = torch.randint(lo, hi, (rows, cols // 32), generator=g, dtype=torch.uint8)
    return blocks, scales


def test_dequantize_gives_the_spec_value_of_every_code_and_scale(isa):
    # all 256 bytes (every e2m1 pair) under every E8M0 scale from 0 (2**-127, subnormal in float32) to 254
    # (2**127: 4.0 and 6.0 overflow float32 to inf); 255 is NaN in the spec and never in a checkpoint
    blocks = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16).expand(255, 16, 16).contiguous()
    scales = torch.arange(255, dtype=torch.uint8).reshape(255, 1).expand(255, 16).contiguous()
    out = OPS.mxfp4_dequantize(blocks, scales)
    want = torch.tensor([spec_decode(blocks[r], scales[r]) for r in range(255)], dtype=torch.float64)
    assert torch.equal(out, want.float()), isa
    assert torch.equal(out, mxfp4.dequantize(blocks, scales))


@pytest.fixture(params=[True, False], ids=["fixed-point", "float-lookup"])
def activations(request):
    OPS.set_fixed_point(request.param)
    yield request.param
    OPS.set_fixed_point(True)


# rows and columns: odd counts of rows (the kernels take 4 or 2 at a time) and of 32-column groups (4 to a step)
@pytest.mark.parametrize("rows,cols,n", [(1, 32, 1), (5, 64, 2), (37, 96, 3), (130, 2880, 5), (7, 32, 9), (33, 160, 4)])
def test_packed_linear_matches_the_spec_decoder(isa, activations, rows, cols, n):
    blocks, scales = packed(rows, cols, seed=rows * cols + n)
    scales[0, 0] = 0  # an extreme scale among the ordinary ones
    weight = torch.tensor([spec_decode(blocks[r], scales[r]) for r in range(rows)], dtype=torch.float64)
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, cols, generator=g)
    x[:, ::7] *= 1000  # outliers: a group's fixed-point step is set by its largest value
    bias = torch.randn(rows)
    want = x.double() @ weight.T + bias.double()
    got = OPS.mxfp4_linear(x, blocks, scales, bias)
    assert got.shape == (n, rows)
    assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max()), isa


def test_fixed_point_agrees_with_float32_lookup_to_float32_rounding(isa):
    blocks, scales = packed(64, 2880, seed=5)
    x = torch.randn(3, 2880, generator=torch.Generator().manual_seed(5))
    fixed = OPS.mxfp4_linear(x, blocks, scales)
    OPS.set_fixed_point(False)
    try:
        lookup = OPS.mxfp4_linear(x, blocks, scales)
    finally:
        OPS.set_fixed_point(True)
    assert OPS.fixed_point()
    assert float((fixed - lookup).abs().max()) <= 1e-6 * float(lookup.abs().max())


def test_activations_fixed_point_cannot_hold_take_the_float_kernels(isa):
    # inf and NaN (which must come out as float arithmetic gives them) and a token of values so small that
    # their fixed-point steps would be subnormal: these tokens go through the float-lookup kernels.
    blocks, scales = packed(9, 96, seed=9)
    weight = torch.tensor([spec_decode(blocks[r], scales[r]) for r in range(9)], dtype=torch.float64)
    x = torch.randn(3, 96, generator=torch.Generator().manual_seed(9))
    x[1] *= 1e-33
    want = x.double() @ weight.T
    got = OPS.mxfp4_linear(x, blocks, scales)
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=0)
    x[2, 40] = float("inf")
    x[0, 3] = float("nan")
    got = OPS.mxfp4_linear(x, blocks, scales)
    assert torch.isnan(got[0]).all() and torch.isinf(got[2]).sum() + torch.isnan(got[2]).sum() == 9
    assert torch.allclose(got[1].double(), want[1], rtol=1e-5, atol=0)


@pytest.mark.parametrize("n", [1, 3, 40])  # 40 > SMALL_N: the tiled GEMM path
@pytest.mark.parametrize("cols", [200, 48, 96, 2880])  # one token: pairs of bf16 per lane where 16 or 32 divide it
def test_bf16_linear_matches_float64(isa, n, cols):
    w = torch.randn(77, cols).bfloat16()
    x = torch.randn(n, cols)
    bias = torch.randn(77)
    want = x.double() @ w.double().T + bias.double()
    got = OPS.bf16_linear(x, w, bias, modules.SMALL_N)
    assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max())


def reference_experts(h: int, i: int, e: int, seed: int):
    """transformers' GptOssExperts with the same (dequantized) weights, and the packed tensors."""
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssExperts

    cfg = tiny_config(hidden=h, intermediate=i, experts=e, top_k=min(4, e))
    gu_b, gu_s = packed(e * 2 * i, h, seed)
    dn_b, dn_s = packed(e * h, i, seed + 1, lo=122, hi=128)
    tensors = {
        "gate_up_proj_blocks": gu_b.reshape(e, 2 * i, h // 32, 16), "gate_up_proj_scales": gu_s.reshape(e, 2 * i, h // 32),
        "down_proj_blocks": dn_b.reshape(e, h, i // 32, 16), "down_proj_scales": dn_s.reshape(e, h, i // 32),
        "gate_up_proj_bias": torch.randn(e, 2 * i), "down_proj_bias": torch.randn(e, h),
    }
    ref = GptOssExperts(cfg)
    with torch.no_grad():
        ref.gate_up_proj.copy_(mxfp4.dequantize(tensors["gate_up_proj_blocks"], tensors["gate_up_proj_scales"]).transpose(1, 2))
        ref.down_proj.copy_(mxfp4.dequantize(tensors["down_proj_blocks"], tensors["down_proj_scales"]).transpose(1, 2))
        ref.gate_up_proj_bias.copy_(tensors["gate_up_proj_bias"])
        ref.down_proj_bias.copy_(tensors["down_proj_bias"])
    return ref, tensors, cfg


@pytest.mark.parametrize("tokens", [1, 3, 200])  # 200 tokens over 6 experts: the dequantize-and-GEMM path
@pytest.mark.parametrize("kernels", ["ext", "torch"])
def test_packed_experts_equal_transformers_experts(tokens, kernels, request):
    ref, tensors, cfg = reference_experts(h=96, i=64, e=6, seed=tokens)
    ours = modules.PackedExperts(tensors, cfg.swiglu_alpha, cfg.swiglu_limit, OPS if kernels == "ext" else None)
    g = torch.Generator().manual_seed(tokens)
    x = torch.randn(tokens, 96, generator=g) * 3  # large enough that the clamp at +-7 is reached
    idx = torch.stack([torch.randperm(6, generator=g)[:4] for _ in range(tokens)])
    w = torch.softmax(torch.randn(tokens, 4, generator=g), dim=-1)
    with torch.no_grad():
        want = ref(x, idx, w)
        gate_up = x @ ref.gate_up_proj[idx[0, 0]] + ref.gate_up_proj_bias[idx[0, 0]]
    assert float(gate_up.abs().max()) > cfg.swiglu_limit  # the clamp matters in this test
    got = ours(x, idx, w)
    assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max())


def test_chunked_attention_equals_eager(monkeypatch):
    from transformers.models.gpt_oss.modeling_gpt_oss import eager_attention_forward

    class Module:
        num_key_value_groups = 4
        training = False
        sinks = torch.randn(8)

    q, k, v = torch.randn(1, 8, 50, 16), torch.randn(1, 2, 50, 16), torch.randn(1, 2, 50, 16)
    mask = torch.triu(torch.full((50, 50), float("-inf")), 1)[None, None]
    want, want_w = eager_attention_forward(Module(), q, k, v, mask, scaling=0.25)
    got, got_w = attention.attention(Module(), q, k, v, mask, scaling=0.25)
    assert torch.allclose(got, want, atol=1e-6) and torch.allclose(got_w, want_w, atol=1e-6)
    monkeypatch.setattr(attention, "SCORE_BYTES", 8 * 51 * 4 * 7)  # 7 queries a chunk
    got, got_w = attention.attention(Module(), q, k, v, mask, scaling=0.25)
    assert torch.allclose(got, want, atol=1e-6) and got_w is None


def test_sliding_window_attention_skips_only_masked_keys(monkeypatch):
    from transformers.models.gpt_oss.modeling_gpt_oss import eager_attention_forward

    class Module:
        num_key_value_groups = 4
        training = False
        sinks = torch.randn(8)
        sliding_window = 10

    n = 50
    q, k, v = torch.randn(1, 8, n, 16), torch.randn(1, 2, n, 16), torch.randn(1, 2, n, 16)
    pos = torch.arange(n)
    seen = (pos[:, None] >= pos[None, :]) & (pos[:, None] - pos[None, :] < Module.sliding_window)
    mask = torch.where(seen, 0.0, torch.finfo(torch.float32).min)[None, None]
    for queries in (n, 1):  # a prefill, then the last token alone (a decode step)
        qq, mm = q[:, :, n - queries:], mask[:, :, n - queries:]
        want, want_w = eager_attention_forward(Module(), qq, k, v, mm, scaling=0.25)
        got, got_w = attention.attention(Module(), qq, k, v, mm, scaling=0.25)
        assert torch.allclose(got, want, atol=1e-6) and torch.allclose(got_w, want_w, atol=1e-6)
        assert got_w.shape == want_w.shape
    monkeypatch.setattr(attention, "SCORE_BYTES", 8 * 21 * 4 * 7)  # 7 queries a chunk
    got, _ = attention.attention(Module(), q, k, v, mask, scaling=0.25)
    assert torch.allclose(got, eager_attention_forward(Module(), q, k, v, mask, scaling=0.25)[0], atol=1e-6)


@pytest.mark.parametrize("heads,kv,dim,window", [(64, 8, 64, None), (64, 8, 64, 128), (4, 2, 72, None), (8, 1, 16, 5), (12, 1, 36, None)])
def test_the_fused_decode_attention_equals_eager(heads, kv, dim, window):
    """One decoded token through the C++ kernel, on a view of a longer key/value buffer (as a cache holds it)."""
    from transformers.models.gpt_oss.modeling_gpt_oss import eager_attention_forward

    class Module:
        num_key_value_groups = heads // kv
        training = False
        sinks = torch.randn(heads) * 3
        sliding_window = window

    n = 300
    buf = torch.randn(2, 2, kv, n + 20, dim)  # keys and values, 20 spare slots past the context
    k, v = buf[0, :, :, :n], buf[1, :, :, :n]
    q = torch.randn(2, heads, 1, dim)
    seen = torch.ones(2, n, dtype=torch.bool)
    seen[1, :3] = False  # batch row 1 is left-padded by three tokens
    if window:
        seen[:, : n - window] = False
    mask = torch.where(seen, 0.0, torch.finfo(torch.float32).min)[:, None, None, :]
    mask[0, 0, 0, n - 2] = float("-inf")
    want, want_w = eager_attention_forward(Module(), q, k, v, mask, scaling=dim**-0.5)
    got, got_w = OPS.decode_attention(q, k, v, mask[:, 0, 0], Module.sinks, dim**-0.5, n - window if window else 0)
    assert got.shape == want.shape and got_w.shape == want_w.shape
    assert torch.allclose(got, want, atol=2e-5, rtol=1e-4) and torch.allclose(got_w, want_w, atol=2e-6, rtol=1e-4)
    if window:
        assert not got_w[..., : n - window].any()  # keys before the window take no part
    via, via_w = attention.attention(Module(), q, k, v, mask, scaling=dim**-0.5)  # the module's decode route
    assert torch.equal(via, got) and torch.equal(via_w, got_w)


def logits(model, ids):
    with torch.inference_mode():
        return model.model(input_ids=torch.tensor([ids])).logits[0]


def assert_same_logits(a, b, tol):
    scale = float(b.abs().max())
    assert float((a - b).abs().max()) <= tol * scale, float((a - b).abs().max()) / scale


@pytest.mark.parametrize("name", ["tiny", "nano"])
def test_engine_equals_transformers_float32(name):
    ours, theirs = load(name), load(name, moe="dequantized")
    assert ours.report.moe_path == f"mxfp4-cpu ({OPS.isa()})" and theirs.report.moe_path == "dequantized-float32"
    assert ours.report.engine.startswith("transformers + gptoss-lab")
    assert type(ours.model.model.layers[0].mlp.experts).__name__ == "PackedExperts"
    assert any("24-bit fixed point" in n for n in ours.report.notes) == (OPS.isa() != "scalar")
    assert ours.report.memory_bytes < theirs.report.memory_bytes
    long_prompt = (PROMPT * 20)[:300]  # past SMALL_N tokens per expert: the prefill path
    for ids in (PROMPT[:1], PROMPT, long_prompt):
        assert_same_logits(logits(ours, ids), logits(theirs, ids), 1e-4)
    a = list(ours.stream(PROMPT, max_tokens=48, temperature=0, routing=True, sinks=True))
    b = list(theirs.stream(PROMPT, max_tokens=48, temperature=0, routing=True, sinks=True))
    assert [s.token for s in a] == [s.token for s in b]
    assert [[r[0] for r in s.routing] for s in a[:-1]] == [[r[0] for r in s.routing] for s in b[:-1]]
    assert all(s.sinks for s in a[:-1])  # the sinks' share works through the engine's attention
    # decoding past the sliding window (128): the window layers attend to their last keys only
    a = [s.token for s in ours.stream(long_prompt, max_tokens=8, temperature=0)]
    assert a == [s.token for s in theirs.stream(long_prompt, max_tokens=8, temperature=0)]


def mapped_resident_bytes(folder) -> int:
    """Resident bytes of this process's memory maps of files under ``folder`` (Linux's smaps)."""
    total, inside = 0, False
    for line in open("/proc/self/smaps"):
        head = line.split()
        if "-" in head[0] and len(head) >= 5 and not line.startswith(("Rss:", "Pss")):  # a mapping's first line
            inside = len(head) >= 6 and head[5].startswith(str(folder))
        elif inside and head[0] == "Rss:":
            total += int(head[1]) * 1024
    return total


def test_a_real_width_checkpoint_from_an_independent_generator(tmp_path):
    # hidden 2880 as in gpt-oss, experts drawn as raw bytes (not through our quantizer), a smaller vocabulary
    cfg = tiny_config(layers=2, hidden=2880, intermediate=2880, experts=4, top_k=4, heads=64, kv_heads=8,
                      head_dim=64, vocab_size=32768)
    cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id = 0, 1, 2
    folder = write_random_checkpoint(tmp_path / "wide", cfg, seed=7)
    ours = load(str(folder))
    assert ours.report.moe_path.startswith("mxfp4-cpu (")
    theirs = load(str(folder), moe="dequantized")
    ids = [int(i) for i in torch.randint(0, 32768, (40,), generator=torch.Generator().manual_seed(1))]
    assert_same_logits(logits(ours, ids), logits(theirs, ids), 1e-3)
    assert_same_logits(logits(ours, ids[:1]), logits(theirs, ids[:1]), 1e-3)
    # The embedding (189 MB here) stays in the file, read a row at a time: next to nothing of it is resident.
    embedding = ours.model.model.embed_tokens
    assert embedding.mapped and any("stays in the checkpoint's file" in n for n in ours.report.notes)
    list(ours.stream(ids, max_tokens=4, temperature=0))
    if os.path.exists("/proc/self/smaps"):
        assert mapped_resident_bytes(folder) < 2**20
    # A change to the weight in place is seen by the lookup, as with any nn.Embedding.
    before = logits(ours, ids[:3])
    with torch.no_grad():
        embedding.weight[ids[2]] *= -1
    assert not torch.allclose(logits(ours, ids[:3])[-1], before[-1])
    assert torch.equal(logits(ours, ids[:2]), before[:2])


def test_the_fallback_is_named_and_correct(tmp_path):
    code = (
        "import json, torch, gptoss_lab\n"
        "m = gptoss_lab.load('tiny')\n"
        "with torch.inference_mode():\n"
        f"    out = m.model(input_ids=torch.tensor([{PROMPT}])).logits[0, -1]\n"
        "print(json.dumps({'moe_path': m.report.moe_path, 'notes': m.report.notes, 'logits': out.tolist()}))\n"
    )
    env = {**os.environ, "GPTOSS_LAB_CPU_KERNELS": "torch"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    assert doc["moe_path"] == "mxfp4-cpu (torch fallback)"
    assert any("pure-torch fallback" in n and "GPTOSS_LAB_CPU_KERNELS" in n for n in doc["notes"])
    assert_same_logits(torch.tensor(doc["logits"]), logits(load("tiny"), PROMPT)[-1], 1e-4)


def test_no_compiler_is_one_clear_line(tmp_path):
    code = (
        "from gptoss_lab.cpu import build\n"
        "print(build.ops() is None); print(build.why_not())\n"
    )
    env = {"PATH": str(tmp_path), "HOME": str(tmp_path), "GPTOSS_LAB_CACHE_DIR": str(tmp_path / "cache"), "CXX": "no-such-c++"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    none, why = out.stdout.strip().splitlines()
    assert none == "True" and "no C++ compiler found" in why and "g++" in why


def test_a_long_prompt_prefilled_in_pieces_gives_the_same_next_token(monkeypatch):
    from gptoss_lab.backends import transformers_backend

    m = load("nano")
    prompt = PROMPT * 3
    whole = m.prefill(prompt).clone()
    m.reset()
    monkeypatch.setattr(transformers_backend, "CPU_PREFILL_CHUNK", 7)  # 48 tokens in 7 passes
    pieces = m.prefill(prompt)
    assert m.last_prefill == {"cached": 0, "prefilled": len(prompt)} and m._cache.get_seq_length() == len(prompt)
    assert_same_logits(pieces, whole, 1e-5) and int(pieces.argmax()) == int(whole.argmax())
