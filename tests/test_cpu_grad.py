"""Gradients through the CPU engine reach the activations (a saliency map over a prompt's embeddings) and
equal those of transformers' dequantized float32 path; with autograd off the fused ops still run."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from gptoss_lab.backends.transformers_backend import load
from gptoss_lab.cpu import build
from gptoss_lab.cpu.modules import DenseLinear, PackedExperts

from .test_cpu_layers import Counting, set_ops

OPS = build.ops()
PROMPT = [200006, 17360, 200008, 3575, 553, 17554, 162016, 11, 261, 4410, 6439, 2359, 22203, 656, 7788, 17527]
pytestmark = pytest.mark.usefixtures("cpu_kernels")  # missing: a failure in CI, else a skip naming why


def saliency(model, ids, prefix=(), counting=None):
    """d(a fixed mix of the last position's logits) / d(the embeddings of ``ids``), after ``prefix`` in the
    cache (``counting``: its calls cleared after the prefix, so that they are the gradient's pass only)."""
    cache = DynamicCache(config=model.config)
    if prefix:
        with torch.no_grad():
            model(input_ids=torch.tensor([list(prefix)]), past_key_values=cache, use_cache=True)
    if counting is not None:
        counting.calls.clear()
    emb = model.get_input_embeddings()(torch.tensor([ids])).detach().float().requires_grad_()
    logits = model(inputs_embeds=emb, past_key_values=cache, use_cache=True).logits[0, -1]
    mix = torch.randn(logits.shape[-1], generator=torch.Generator().manual_seed(0))
    (grad,) = torch.autograd.grad((logits * mix).sum(), emb)
    return grad[0]


def assert_close(a, b, tol):
    scale = float(b.abs().max())
    assert scale > 0 and float((a - b).abs().max()) <= tol * scale, float((a - b).abs().max()) / scale


@pytest.mark.parametrize("name", ["tiny", "nano"])
def test_gradients_equal_transformers_float32(name):
    ours, theirs = load(name), load(name, moe="dequantized")
    counting = Counting(OPS)
    set_ops(ours.model, counting)
    bf16 = sum(isinstance(m, DenseLinear) and m.packed for m in ours.model.modules())
    for module in ours.model.modules():  # the experts' and the dense linears' kernels too
        if isinstance(module, (PackedExperts, DenseLinear)):
            module.ops = counting
    long_prompt = (PROMPT * 3)[:40]  # past SMALL_N tokens: the prefill paths
    for ids, prefix in ((PROMPT, ()), (long_prompt, ()), (PROMPT[-1:], PROMPT[:-1])):  # the last: one decoded token
        got = saliency(ours.model, ids, prefix, counting)
        # with autograd recording, no fused op ran (their outputs carry no gradient); the packed kernels did
        assert not {"rms_norm", "router", "qkv_rope", "decode_attention", "decode_layer_qkv", "decode_layer_rest"} & set(counting.calls)
        assert counting.calls["moe_forward"] == ours.model.config.num_hidden_layers
        assert counting.calls.get("bf16_linear", 0) == bf16  # every bf16 linear (q, k, v, o, lm_head; nano: none)
        assert got.abs().sum(-1).min() > 0  # every position gets a gradient
        assert_close(got, saliency(theirs.model, ids, prefix), 1e-3)
    # without autograd a decoded token takes the fused ops again (a whole layer where its linears are bf16)
    layers = ours.model.config.num_hidden_layers
    with torch.inference_mode():
        cache = DynamicCache(config=ours.model.config)
        ours.model(input_ids=torch.tensor([PROMPT[:-1]]), past_key_values=cache, use_cache=True)
        counting.calls.clear()
        ours.model(input_ids=torch.tensor([PROMPT[-1:]]), past_key_values=cache, use_cache=True)
    assert counting.calls.get("decode_layer_rest" if bf16 else "router", 0) == layers
