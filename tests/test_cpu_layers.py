"""The CPU engine's fused decode layers (gptoss_lab/cpu/layers.py, csrc/layers.cpp): a decoded token's
norms, routers, attention and whole decoder layers in fewer calls, with transformers' results, and
transformers' own forward wherever a hook or an output recorder would see the difference."""

from __future__ import annotations

import pytest
import torch

from gptoss_lab.backends.tiny import tiny_config, write_random_checkpoint
from gptoss_lab.backends.transformers_backend import load
from gptoss_lab.cpu import build, layers

OPS = build.ops()
PROMPT = [200006, 17360, 200008, 3575, 553, 17554, 162016, 11, 261, 4410, 6439, 2359, 22203, 656, 7788, 17527]
pytestmark = pytest.mark.usefixtures("cpu_kernels")  # missing: a failure in CI, else a skip naming why


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


def next_logits(m, prompt, ops, last=None):
    """Logits after the prompt, its last token fed alone on top of the cached rest (a decoded token), with the
    fused modules on ``ops`` (``None``: transformers' forward throughout) and on ``last`` for that token."""
    set_ops(m.model, ops)
    try:
        m.reset()
        m.prefill(prompt[:-1])
        set_ops(m.model, last or ops)
        return m.prefill(prompt).clone()
    finally:
        set_ops(m.model, OPS)


def assert_close(a, b, tol=1e-5):
    scale = float(b.abs().max())
    assert float((a - b).abs().max()) <= tol * scale and int(a.argmax()) == int(b.argmax())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    # bf16 dense weights as gpt-oss's own checkpoints; a sliding window of 4 keys, so that the prompt goes past it
    folder = write_random_checkpoint(tmp_path_factory.mktemp("tiny") / "w4", tiny_config(sliding_window=4), seed=3)
    m = load(str(folder))
    assert all(type(layer) is layers.FusedDecoderLayer for layer in m.model.model.layers)
    assert m.model.config.layer_types[0] == "sliding_attention"
    return m


def test_a_decoded_token_takes_two_calls_a_layer_with_transformers_result(tiny):
    counting = Counting(OPS)
    fused = next_logits(tiny, PROMPT, OPS, last=counting)
    n = len(tiny.model.model.layers)
    assert counting.calls.get("decode_layer_qkv") == n and counting.calls.get("decode_layer_rest") == n
    assert_close(fused, next_logits(tiny, PROMPT, None))


def test_where_a_layer_falls_back_its_parts_still_run_fused(tiny):
    hook = tiny.model.model.layers[1].mlp.register_forward_hook(lambda *a: None)  # layer 1 takes transformers' forward
    counting = Counting(OPS)
    try:
        fused = next_logits(tiny, PROMPT, OPS, last=counting)
    finally:
        hook.remove()
    assert counting.calls.get("decode_layer_rest") == 1  # layer 0
    assert counting.calls.get("qkv_rope") == 1 and counting.calls.get("router") == 1
    assert counting.calls.get("rms_norm") == 3  # layer 1's two, and the model's last
    assert_close(fused, next_logits(tiny, PROMPT, None))


@pytest.mark.parametrize("part", ["mlp.router", "self_attn.q_proj", "self_attn.v_proj", "mlp.experts", "self_attn"])
def test_a_hook_on_a_layers_part_sees_every_decoded_token(tiny, part):
    seen: list[int] = []  # a mark per call
    module = tiny.model.model.layers[0].get_submodule(part)
    hook = module.register_forward_hook(lambda mod, args, out: seen.append(1))  # self_attn takes keyword arguments
    counting = Counting(OPS)
    set_ops(tiny.model, counting)
    tiny.reset()  # the whole prompt prefilled (several tokens: transformers' forward), then tokens one by one
    try:
        steps = list(tiny.stream(PROMPT, max_tokens=4, temperature=0))
    finally:
        hook.remove()
        set_ops(tiny.model, OPS)
    fed = len(steps) - 1  # the last token is never fed
    assert len(seen) == 1 + fed
    assert counting.calls.get("decode_layer_rest", 0) == fed * (len(tiny.model.model.layers) - 1)
    tiny.reset()
    assert [s.token for s in tiny.stream(PROMPT, max_tokens=4, temperature=0)] == [s.token for s in steps]


def test_recorded_outputs_come_from_the_modules(tiny):
    ids = torch.tensor([PROMPT[:1]])

    def run(ops, **flags):
        set_ops(tiny.model, ops)
        try:
            with torch.inference_mode():
                return tiny.model(input_ids=ids, **flags)
        finally:
            set_ops(tiny.model, OPS)

    flags = dict(output_attentions=True, output_router_logits=True, output_hidden_states=True)
    fused, plain = run(OPS, **flags), run(None, **flags)
    n = len(tiny.model.model.layers)
    assert len(fused.attentions) == n and len(fused.router_logits) == n and len(fused.hidden_states) == n + 1
    for name in ("attentions", "router_logits", "hidden_states"):
        assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(getattr(fused, name), getattr(plain, name)))
    only_states = run(OPS, output_hidden_states=True)  # the layers fused: a layer's own output is recorded still
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(only_states.hidden_states, plain.hidden_states))


def test_the_small_fused_ops_equal_transformers_modules(tiny):
    layer = tiny.model.model.layers[1]
    x = torch.randn(3, layer.hidden_size)
    norm, router = layer.input_layernorm, layer.mlp.router
    assert torch.allclose(norm(x), super(layers.FusedRMSNorm, norm).forward(x), rtol=1e-6, atol=1e-6)
    got, want = router(x), super(layers.FusedRouter, router).forward(x)
    assert torch.allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
    assert torch.equal(got[2], want[2]) and torch.allclose(got[1], want[1], rtol=1e-5)
