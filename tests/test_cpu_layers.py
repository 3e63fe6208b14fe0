"""The CPU engine's fused decode layers (gptoss_lab/cpu/layers.py, csrc/layers.cpp): a decoded token's
norms, routers, attention and whole decoder layers in fewer calls, with transformers' results, and
transformers' own forward wherever a hook or an output recorder would see the difference."""

from __future__ import annotations

import pytest
import torch

from gptoss_lab.backends.transformers_backend import load
from gptoss_lab.cpu import build, layers

OPS = build.ops()
PROMPT = [200006, 17360, 200008, 3575, 553, 17554, 162016, 11, 261, 4410, 6439, 2359, 22203, 656, 7788, 17527]
pytestmark = pytest.mark.skipif(OPS is None, reason=f"the CPU kernels are not built here: {build.why_not()}")


class Counting:
    """The extension with a count of the calls of each op (what ran, not only what came out)."""

    def __init__(self, ops):
        self.ops, self.calls = ops, {}

    def __getattr__(self, name):
        fn = getattr(self.ops, name)

        def call(*args, **kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            return fn(*args, **kwargs)

        return call


def set_ops(model, ops) -> None:
    for module in model.modules():
        if isinstance(module, tuple(layers.SWAPS.values())):
            module.ops = ops


def next_logits(m, prompt):
    """Logits after the prompt, its last token fed alone on top of the cached rest (a decoded token)."""
    m.reset()
    m.prefill(prompt[:-1])
    return m.prefill(prompt)


@pytest.fixture(scope="module")
def tiny():
    m = load("tiny")  # bf16 dense weights, as gpt-oss's own checkpoints
    assert all(type(layer) is layers.FusedDecoderLayer for layer in m.model.model.layers)
    return m


def test_a_decoded_token_takes_two_calls_a_layer_with_transformers_result(tiny):
    counting = Counting(OPS)
    set_ops(tiny.model, counting)
    try:
        fused = next_logits(tiny, PROMPT).clone()
    finally:
        set_ops(tiny.model, OPS)
    n = len(tiny.model.model.layers)
    assert counting.calls.get("decode_layer_qkv") == n and counting.calls.get("decode_layer_rest") == n
    set_ops(tiny.model, None)  # transformers' modules' own forward, every op a torch op
    try:
        plain = next_logits(tiny, PROMPT)
    finally:
        set_ops(tiny.model, OPS)
    scale = float(plain.abs().max())
    assert float((fused - plain).abs().max()) <= 1e-5 * scale
    assert int(fused.argmax()) == int(plain.argmax())


def test_the_small_fused_ops_equal_transformers_modules(tiny):
    layer = tiny.model.model.layers[1]
    x = torch.randn(1, 1, layer.hidden_size)
    norm, router = layer.input_layernorm, layer.mlp.router
    want_norm = super(layers.FusedRMSNorm, norm).forward(x)
    assert torch.allclose(norm(x), want_norm, rtol=1e-6, atol=1e-6)
    got, want = router(x.reshape(1, -1)), super(layers.FusedRouter, router).forward(x.reshape(1, -1))
    assert torch.allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
    assert torch.equal(got[2], want[2]) and torch.allclose(got[1], want[1], rtol=1e-5)


def test_a_hook_on_a_layers_part_sees_every_decoded_token(tiny):
    seen: list[torch.Tensor] = []
    hook = tiny.model.model.layers[0].mlp.router.register_forward_hook(lambda mod, args, out: seen.append(out[2]))
    counting = Counting(OPS)
    set_ops(tiny.model, counting)
    tiny.reset()  # the whole prompt prefilled (several tokens: transformers' forward), then tokens one by one
    try:
        steps = list(tiny.stream(PROMPT, max_tokens=4, temperature=0))
    finally:
        hook.remove()
        set_ops(tiny.model, OPS)
    assert len(seen) == 1 + len(steps) - 1  # the prompt, then each token fed back (the last is never fed)
    assert counting.calls.get("decode_layer_rest", 0) == (len(steps) - 1) * (len(tiny.model.model.layers) - 1)
    with_fusion = [s.token for s in tiny.stream(PROMPT, max_tokens=4, temperature=0)]
    assert with_fusion == [s.token for s in steps]


def test_recorded_outputs_come_from_the_modules(tiny):
    ids = torch.tensor([PROMPT[:1]])
    with torch.inference_mode():
        out = tiny.model(input_ids=ids, output_attentions=True, output_router_logits=True, output_hidden_states=True)
    n = len(tiny.model.model.layers)
    assert len(out.attentions) == n and len(out.router_logits) == n and len(out.hidden_states) == n + 1
    with torch.inference_mode():
        plain = tiny.model(input_ids=ids, output_hidden_states=True)  # the fused path: a layer's output recorded too
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(out.hidden_states, plain.hidden_states))
