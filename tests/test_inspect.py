"""Inspection data checked against the model itself, and the views' static renderings."""

from __future__ import annotations

import pytest
import torch

import gptoss_lab
from gptoss_lab.backends.tiny import init_tiny
from gptoss_lab.display.compare import Comparison, load_distance
from gptoss_lab.display.inspect import InspectView, static_html

from .conftest import ipython_shell


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return gptoss_lab.load(str(init_tiny(tmp_path_factory.mktemp("tiny"), seed=11)))


@pytest.fixture(scope="module")
def result(model):
    model.reset()
    return gptoss_lab.Chat(model, reasoning="low").send("Hello there", max_tokens=24, inspect=True, seed=5)


def test_tokens_are_recorded_per_generated_token(result):
    ids = result.transcript["rounds"][0]["generated_ids"]
    assert [t["id"] for t in result.tokens] == ids and len(ids) == 24
    for t in result.tokens:
        assert t["state"] in ("header", "content", "between", "malformed")
        assert t["special"] == (t["id"] >= 199998)
        assert len(t["alternatives"]) == 5
    assert result.tokens[-1]["routing"] is None  # never fed to the model
    assert all(t["routing"] for t in result.tokens[:-1])
    assert result.prompt_ids == result.transcript["prompt_ids"]


def test_routing_and_logprobs_and_sinks_match_a_separate_forward_pass(model, result):
    prompt = result.prompt_ids
    ids = prompt + [t["id"] for t in result.tokens]
    chosen = {}
    hooks = [layer.mlp.router.register_forward_hook(lambda m, i, o, k=k: chosen.__setitem__(k, o))
             for k, layer in enumerate(model.model.model.layers)]
    try:
        with torch.inference_mode():
            out = model.model(torch.tensor([ids]), output_attentions=True)
    finally:
        for h in hooks:
            h.remove()
    logp = torch.log_softmax(out.logits[0].float(), dim=-1)
    for i, t in enumerate(result.tokens):
        assert t["logprob"] == pytest.approx(logp[len(prompt) - 1 + i, t["id"]].item(), abs=1e-4)
        if t["routing"] is None:
            continue
        pos = len(prompt) + i  # the experts that processed this token as input
        for layer, (experts, weights) in enumerate(t["routing"]):
            _, scores, indices = chosen[layer]
            assert experts == indices[pos].tolist()
            assert weights == pytest.approx(scores[pos].tolist(), abs=1e-5)
        for layer, heads in enumerate(t["sinks"]):
            expected = (1 - out.attentions[layer][0, :, pos, :].sum(-1)).tolist()
            assert heads == pytest.approx(expected, abs=1e-5)


def test_table_and_expert_load(result):
    rows = result.token_table()
    assert len(rows) == len(result.tokens)
    assert all(not isinstance(v, (list, dict)) for r in rows for v in r.values())  # flat: a DataFrame as is
    assert {"id", "text", "channel", "state", "logprob", "layer0_expert", "layer0_sink"} <= set(rows[0])
    load = result.expert_load()
    top_k = len(result.tokens[0]["routing"][0][0])
    assert [sum(layer) for layer in load] == [top_k * (len(result.tokens) - 1)] * len(load)
    assert len(load[0]) == result.transcript["num_experts"]


def hook_count(model):
    return sum(len(layer.mlp._forward_pre_hooks) + len(layer.self_attn._forward_hooks) for layer in model.model.model.layers)


def test_without_inspect_nothing_is_recorded(model):
    before = hook_count(model)  # (transformers keeps hooks of its own after output_attentions=True)
    seen = []
    r = gptoss_lab.Chat(model).send("hi", max_tokens=4, seed=1)
    assert r.tokens is None and "tokens" not in r.transcript
    with pytest.raises(ValueError, match="inspect=True"):
        r.token_table()
    for _ in model.stream([200006, 1428], max_tokens=2, routing=True, sinks=True):
        seen.append(hook_count(model))
    assert seen[0] > before  # hooks only while inspecting
    assert hook_count(model) == before


def test_views_carry_a_static_rendering(result):
    view = InspectView(result)
    data, _ = view._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in data
    static = data["text/html"]
    assert static == static_html(result) and "<script" not in static
    assert static.count("<span") == len(result.tokens)
    assert view._data["num_layers"] == 2 and view._data["load"]["all"] == result.expert_load()


def test_compare_runs_each_effort_with_the_same_seed(model):

    ip = ipython_shell()
    ip.run_line_magic("load_ext", "gptoss_lab")
    ip.user_ns["_gptoss_lab_model"] = model
    ip._gptoss_lab_magics.model = model
    comparison = ip.run_line_magic("gptoss", 'compare "Hi there" --seed 4 --max-tokens 12')
    assert isinstance(comparison, Comparison) and list(comparison) == ["low", "medium", "high"]
    assert {r.transcript["sampling"]["seed"] for r in comparison.values()} == {4}
    assert [r.transcript["reasoning"] for r in comparison.values()] == ["low", "medium", "high"]
    prompts = [gptoss_lab.encoding().decode_utf8(r.prompt_ids) for r in comparison.values()]
    assert "Reasoning: low" in prompts[0] and "Reasoning: high" in prompts[2]
    html = comparison._repr_html_()
    assert html.count("<th>low</th>") == 1 and "expert use vs low" in html and "final answer" in html
    assert "0 = the same experts as often" in html and "raw, unfiltered chain of thought" in html  # every figure explained
    assert "<script" not in comparison.bundle()["text/html"]
    unquoted = ip.run_line_magic("gptoss", "compare What is 2+2? --efforts low --max-tokens 8")  # no quotes needed
    assert unquoted.prompt == "What is 2+2?" and list(unquoted) == ["low"]
    rows = comparison.rows()
    assert rows[0]["expert_load_distance"] is None and all(0 <= r["expert_load_distance"] <= 1 for r in rows[1:])
    with pytest.raises(Exception, match="--efforts takes low, medium and/or high"):
        ip.run_line_magic("gptoss", 'compare "x" --efforts extreme')


def test_load_distance():
    assert load_distance([[2, 0]], [[2, 0]]) == 0
    assert load_distance([[2, 0]], [[0, 5]]) == 1
    assert load_distance([[1, 1]], [[2, 0]]) == 0.5
