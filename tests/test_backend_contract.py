"""The backend contract (gptoss_lab/backends/base.py), checked against every backend.

Each backend joins by adding a param to ``backend``: the test then holds it to what the Protocol
promises. Here: the transformers backend on a random-weight checkpoint (``tiny``) and on the trained
``nano``, the replay backend, and the remote backend on real llama.cpp and vLLM servers serving nano.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading

import pytest

import gptoss_lab
from gptoss_lab.backends.base import Backend, Capabilities, LoadReport
from gptoss_lab.backends.tiny import init_tiny
from gptoss_lab.harmony import conversation as conv
from gptoss_lab.harmony.events import CALL, RETURN

STOPS = (RETURN, CALL)
# A recording written for this test in the Harmony format (not model output): two stretches.
RECORDING = (
    "<|channel|>analysis<|message|>The user wants a sum. I will compute it with python now.<|end|>"
    "<|start|>assistant<|channel|>analysis to=python code<|message|>print(2 + 2)<|call|>"
    "<|start|>python to=assistant<|channel|>analysis<|message|>4\n<|end|>"
    "<|start|>assistant<|channel|>final<|message|>2 + 2 = 4.<|return|>"
)


def prompt() -> list[int]:
    return conv.render_for_completion([conv.system_message(current_date=None), conv.user_message("What is the capital of France?")])


@contextlib.contextmanager
def no_change(backend):
    yield


@contextlib.contextmanager
def return_after_first_token(backend):
    """Random weights never say <|return|>: make it the clear choice after the first token."""
    import torch

    backend.reset()
    first = next(iter(backend.stream(prompt(), max_tokens=1, temperature=0))).token
    head = backend.model.lm_head.weight
    saved = (head[RETURN].detach().clone(), head[first].detach().clone())
    with torch.no_grad():
        head[RETURN] = head[first] * 3
        head[first] = saved[1]
    try:
        yield
    finally:
        with torch.no_grad():
            head[RETURN] = saved[0]
        backend.reset()


@pytest.fixture(scope="module")
def llama_server():
    from gptoss_lab.serving import llamacpp

    with llamacpp.Server(llamacpp.nano_gguf(), threads=2) as srv:
        yield srv


@pytest.fixture(scope="module")
def vllm_server():
    from gptoss_lab.serving import vllm

    with vllm.Server(vllm.nano_float32()) as srv:
        yield srv


@pytest.fixture(scope="module", params=["tiny", "nano", "replay", "llama.cpp", "vllm"])
def case(request, tmp_path_factory):
    if request.param in ("llama.cpp", "vllm"):
        server = request.getfixturevalue("llama_server" if request.param == "llama.cpp" else "vllm_server")
        return gptoss_lab.load(server.url), no_change
    if request.param == "tiny":
        b = gptoss_lab.load(str(init_tiny(tmp_path_factory.mktemp("tiny"), seed=4)))
        return b, return_after_first_token
    if request.param == "nano":
        return gptoss_lab.load("nano"), no_change
    path = tmp_path_factory.mktemp("rec") / "rec.txt"
    path.write_text(RECORDING, encoding="utf-8")
    return gptoss_lab.load(f"replay:{path}"), no_change


def tokens(backend, n=12, **kw):
    backend.reset()
    return list(backend.stream(prompt(), max_tokens=n, **kw))


def test_it_is_a_backend_with_a_report_capabilities_and_reset(case):
    b, _ = case
    assert isinstance(b, Backend)
    assert isinstance(b.report, LoadReport) and b.report.engine and b.report.model
    assert isinstance(b.capabilities, Capabilities)
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.capabilities.logprobs = True  # type: ignore[misc]
    assert b.capabilities.context_length is None or b.capabilities.context_length > 0
    b.reset()


def test_the_stop_token_is_the_last_step(case):
    b, make_it_stop = case
    with make_it_stop(b):
        steps = tokens(b, 200, temperature=0)
    ids = [s.token for s in steps]
    assert ids[-1] in STOPS and len(ids) < 200
    assert not any(t in STOPS for t in ids[:-1])


def test_max_tokens_bounds_the_stream(case):
    b, _ = case
    assert len(tokens(b, 3, temperature=0)) == 3
    assert len(tokens(b, 1, temperature=0)) == 1


def test_cancel_stops_within_one_token(case):
    b, _ = case
    got = []
    b.reset()
    for step in b.stream(prompt(), max_tokens=50, temperature=0, cancel=lambda: len(got) >= 3):
        got.append(step)
    assert len(got) == 3
    stop = threading.Event()
    stop.set()
    b.reset()
    assert list(b.stream(prompt(), max_tokens=50, cancel=stop)) == []


def test_seeded_sampling_repeats(case):
    b, _ = case
    a = [s.token for s in tokens(b, 16, temperature=1.0, seed=7)]
    assert a == [s.token for s in tokens(b, 16, temperature=1.0, seed=7)]


def test_extras_are_there_exactly_when_the_capabilities_say(case):
    b, _ = case
    caps = b.capabilities
    plain = tokens(b, 6, temperature=0)
    assert all(s.logprob is None and s.alternatives == () and s.routing is None and s.sinks is None for s in plain)
    rich = tokens(b, 6, temperature=0, logprobs=3, routing=True, sinks=True)
    assert [s.token for s in rich] == [s.token for s in plain]  # asking for extras changes no token
    for s in rich:
        assert (s.logprob is not None) == caps.logprobs
        assert (len(s.alternatives) == 3) == caps.logprobs
    fed = rich[:-1]  # the last step was never fed to the model: no routing (DESIGN.md)
    assert all((s.routing is not None) == caps.routing for s in fed)
    assert all((s.sinks is not None) == caps.sinks for s in fed)
    if caps.routing:
        assert all(len(ids) == len(w) and max(ids) < caps.experts for s in fed for ids, w in s.routing)


def test_every_name_the_magic_takes_gptoss_lab_load_takes(tmp_path):
    rec = tmp_path / "rec.txt"
    rec.write_text(RECORDING, encoding="utf-8")
    assert gptoss_lab.load(f"replay:{rec}").report.engine == "replay"
    with pytest.raises(FileNotFoundError, match="cannot read the recording"):
        gptoss_lab.load(f"replay:{tmp_path / 'missing.txt'}")
    with pytest.raises(ValueError, match="paces a replay"):
        gptoss_lab.load("nano", tps=5)


def test_a_served_model_takes_no_local_options():
    with pytest.raises(ValueError, match="a served model takes no device option"):
        gptoss_lab.load("http://127.0.0.1:9", device="cpu")
