"""The session loop: one transcript per turn, Stop wherever the turn is (the python tool's sandbox
included, for real), the busy state, and Harmony's chain-of-thought rule across turns."""

from __future__ import annotations

import threading
import time

import pytest

import gptoss_lab
from gptoss_lab.errors import TurnInProgressError
from gptoss_lab.harmony.events import ToolCall
from gptoss_lab.session import SamplingConfig, ToolResult, TurnFinished
from gptoss_lab.tools.python_tool import PythonTool
from gptoss_lab.tools.sandbox import Sandbox

# Recordings written for these tests in the Harmony format (not model output).
SLEEPER = (
    "<|channel|>analysis<|message|>Wait a minute in python.<|end|>"
    "<|start|>assistant<|channel|>analysis to=python code<|message|>import time\ntime.sleep(60)\nprint('slept')<|call|>"
    "<|start|>assistant<|channel|>final<|message|>I slept.<|return|>"
    "<|start|>user<|message|>Next?<|end|>"
    "<|start|>assistant<|channel|>final<|message|>Still here.<|return|>"
)
STUBBORN = (
    "<|channel|>analysis to=python code<|message|>import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "while True:\n    pass<|call|>"
    "<|start|>assistant<|channel|>final<|message|>Done.<|return|>"
)
THREE_TURNS = (
    "<|channel|>analysis<|message|>T1 thinking: a greeting.<|end|>"
    "<|start|>assistant<|channel|>final<|message|>T1 final: hello.<|return|>"
    "<|start|>assistant<|channel|>analysis<|message|>T2 thinking: compute with python.<|end|>"
    "<|start|>assistant<|channel|>analysis to=python code<|message|>print(12*34)<|call|>"
    "<|start|>assistant<|channel|>analysis<|message|>T2 thinking: the tool said it.<|end|>"
    "<|start|>assistant<|channel|>final<|message|>T2 final: 408.<|return|>"
    "<|start|>assistant<|channel|>analysis<|message|>T3 thinking: a farewell.<|end|>"
    "<|start|>assistant<|channel|>final<|message|>T3 final: bye.<|return|>"
)
STRAY = (
    "<|channel|>analysis to=python code<|message|>print(1)<|call|>"
    "<|start|>assistant<|channel|>final<|message|>one<|end|>stray words<|start|>assistant<|channel|>final"
    "<|message|>two<|return|>"
)


def replay(tmp_path, text, name="rec.txt", **kw):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return gptoss_lab.load(f"replay:{path}", **kw)


@pytest.fixture(scope="module")
def sandbox():
    s = Sandbox(timeout=120, memory_mb=512)
    yield s
    s.close()


def test_sampling_config_is_frozen_and_checked():
    c = SamplingConfig(seed=3)
    assert c.replace(max_tokens=10) == SamplingConfig(seed=3, max_tokens=10)
    with pytest.raises(TypeError, match="unknown sampling option tempreature"):
        c.replace(tempreature=0.5)
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingConfig(max_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0)


def test_stop_while_python_sleeps_ends_the_turn_and_the_chat_goes_on(tmp_path, sandbox):
    chat = gptoss_lab.Chat(replay(tmp_path, SLEEPER), tools=[PythonTool(sandbox=sandbox)])
    running = chat.start("Sleep for a minute, please.")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(isinstance(e, ToolCall) for e in [running.get(0.05)]):
        pass
    time.sleep(2)  # the sandbox is now 2 s into time.sleep(60)
    t0 = time.monotonic()
    running.stop()
    result = running.wait()
    took = time.monotonic() - t0
    assert took < 5, took
    assert result is not None and result.stop_reason == "stopped" and result.stopped
    assert not chat.busy
    call = next(m for m in result.messages if m["recipient"] == "python")
    assert "time.sleep(60)" in call["content"]
    (tool,) = result.tool_results
    assert tool.status == "interrupted" and "KeyboardInterrupt" in tool.text and "interrupted" in tool.text
    # the chat goes on: the next turn runs, and the python call and its reply are in its prompt
    nxt = chat.send("Next?")
    assert nxt.final == "I slept." and nxt.stop_reason == "return"
    assert "time.sleep(60)" in gptoss_lab.encoding().decode(nxt.prompt_ids)
    assert sandbox.run("print('alive')").text == "alive\n"


def test_stop_restarts_a_sandbox_that_ignores_the_interrupt_and_the_model_is_told(tmp_path, sandbox):
    chat = gptoss_lab.Chat(replay(tmp_path, STUBBORN), tools=[PythonTool(sandbox=sandbox)])
    sandbox.run("precious = 1")
    stop = threading.Event()
    threading.Timer(1.5, stop.set).start()
    t0 = time.monotonic()
    result = chat.send("Spin.", cancel=stop)
    assert time.monotonic() - t0 < 1.5 + 3
    assert result.stop_reason == "stopped"
    (tool,) = result.tool_results
    assert "restarted" in tool.text and "state" in tool.text and "lost" in tool.text
    assert "NameError" in sandbox.run("precious").text  # it really was restarted
    assert "restarted" in gptoss_lab.encoding().decode(chat.prompt_ids())  # the next turn reads it


def test_a_call_that_arrives_after_the_stop_is_not_run(tmp_path, sandbox):
    chat = gptoss_lab.Chat(replay(tmp_path, "<|channel|>analysis to=python code<|message|>open('/mnt/data/ran', 'w')"
                                            "<|call|><|start|>assistant<|channel|>final<|message|>x<|return|>"),
                           tools=[PythonTool(sandbox=sandbox)])
    stop = threading.Event()
    events = []
    for e in chat.stream("Write a file.", cancel=stop):
        events.append(e)
        if isinstance(e, ToolCall):
            stop.set()  # Stop pressed as the call came in
    result = next(e for e in events if isinstance(e, TurnFinished)).result
    assert result.stop_reason == "stopped"
    (tool,) = [e for e in events if isinstance(e, ToolResult)]
    assert tool.status == "not run" and "not run" in tool.text
    assert not (sandbox.workdir / "ran").exists()


def test_a_second_turn_or_a_reset_while_one_runs_is_refused(tmp_path):
    chat = gptoss_lab.Chat(replay(tmp_path, SLEEPER.replace("Wait a minute", "Wait " * 200), tps=50))
    running = chat.start("Slow, please.")
    assert chat.busy
    with pytest.raises(TurnInProgressError, match="still running"):
        chat.start("Another")
    with pytest.raises(TurnInProgressError):
        chat.send("Another")
    with pytest.raises(TurnInProgressError):
        chat.reset()
    running.stop()
    assert running.wait().stop_reason == "stopped"
    running.thread.join(5)
    assert not chat.busy
    chat.reset()


def test_after_three_turns_the_prompt_holds_no_analysis_and_every_final(tmp_path, sandbox):
    chat = gptoss_lab.Chat(replay(tmp_path, THREE_TURNS), tools=[PythonTool(sandbox=sandbox)])
    finals = [chat.send(q).final for q in ("Hi", "What is 12*34?", "Bye")]
    assert finals == ["T1 final: hello.", "T2 final: 408.", "T3 final: bye."]
    assert chat.results[1].tool_results[0].text == "408\n"  # the sandbox ran it
    text = gptoss_lab.encoding().decode(chat.prompt_ids())
    assert "thinking" not in text and "print(12*34)" not in text and "408\n" not in text
    assert all(f in text for f in finals)


def test_the_rule_holds_on_a_real_model_too(sandbox):
    chat = gptoss_lab.Chat(gptoss_lab.load("nano"), tools=[PythonTool(sandbox=sandbox)], reasoning="low")
    results = [chat.send(q, temperature=0) for q in ("What is the capital of France?", "What is 4096*7?",
                                                     "What is the capital of Japan?")]
    assert results[1].tool_results, "nano calls python for arithmetic"
    text = gptoss_lab.encoding().decode(chat.prompt_ids())
    for r in results:
        assert r.final and r.final in text
        for m in r.messages:
            if m["channel"] == "analysis":
                assert m["content"] not in text


def test_error_positions_index_the_turns_tokens(tmp_path, sandbox):
    chat = gptoss_lab.Chat(replay(tmp_path, STRAY), tools=[PythonTool(sandbox=sandbox)])
    result = chat.send("Go", inspect=True)
    (err,) = result.transcript["errors"]
    assert result.transcript["rounds"][0]["generated_ids"]  # the error is in the second round
    assert err["token_index"] > len(result.transcript["rounds"][0]["generated_ids"])
    shown = "".join(t["text"] for t in result.tokens[err["token_index"]:])
    assert shown.startswith(err["raw"]) and err["raw"].startswith("stray words")
    assert result.final == "two"
    notes = result.transcript["inspect_notes"]
    assert "no attention sinks" in notes[0] and "no logprobs or expert routing" in notes[1]


SLOW = "<|channel|>analysis<|message|>" + "think " * 300 + "<|end|><|start|>assistant<|channel|>final<|message|>ok<|return|>"


def test_ctrl_c_during_send_stops_the_turn_keeps_it_and_raises(tmp_path):
    import _thread

    chat = gptoss_lab.Chat(replay(tmp_path, SLOW, tps=100))
    threading.Timer(0.5, _thread.interrupt_main).start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        chat.send("Think slowly")
    assert time.monotonic() - t0 < 2.5
    assert chat.results[-1].stop_reason == "stopped" and not chat.busy
    assert chat.results[-1].messages[1]["content"].startswith("think think")


def test_a_turn_can_follow_the_end_of_the_last_at_once_and_cancel_may_be_a_callable(tmp_path):
    rec = "<|channel|>final<|message|>one<|return|><|start|>assistant<|channel|>final<|message|>two<|return|>"
    chat = gptoss_lab.Chat(replay(tmp_path, rec))
    assert chat.start("first").wait().final == "one"
    assert chat.send("second").final == "two"  # never "still running": the chat is free once it is over
    slow = gptoss_lab.Chat(replay(tmp_path, SLOW, name="slow.txt", tps=100))
    flag = {"stop": False}
    running = slow.start("go", cancel=lambda: flag["stop"])
    time.sleep(0.3)
    flag["stop"] = True
    time.sleep(0.1)
    flag["stop"] = False  # a callable that changes its mind: the turn stays stopped
    assert running.wait(timeout=5).stop_reason == "stopped"
    again = slow.start("again")
    again.stop()  # stop() works whatever cancel was given
    assert again.wait(timeout=5) is not None and not slow.busy


def test_wait_has_a_deadline_and_get_none_waits_for_an_event(tmp_path):
    chat = gptoss_lab.Chat(replay(tmp_path, SLOW, tps=20))
    running = chat.start("slow")
    t0 = time.monotonic()
    assert running.wait(timeout=0.3) is None and time.monotonic() - t0 < 1.0
    assert running.get(timeout=None) is not None  # blocks until the next event, which comes
    running.stop()
    assert running.wait().stop_reason == "stopped"


def test_a_turn_past_its_tool_rounds_answers_the_last_call(tmp_path):
    loop = "<|channel|>commentary to=functions.ping <|constrain|>json<|message|>{}<|call|>" * 3
    chat = gptoss_lab.Chat(replay(tmp_path, loop), tools=[ping], max_tool_rounds=1)
    r = chat.send("ping forever")
    assert r.stop_reason == "tool_rounds" and r.complete
    assert [t.status for t in r.tool_results] == ["done", "not run"]
    assert "limit of 1 tool rounds" in r.tool_results[-1].text
    assert chat.history[-1].author.role.value == "tool"  # no call left unanswered


def ping() -> str:
    """Answer pong."""
    return "pong"
