"""The magics in a real IPython InteractiveShell, and `gptoss-lab ask` giving the same transcript."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

from gptoss_lab.display.bundle import MIME

from .conftest import ipython_shell

RECORDING = (
    "<|channel|>analysis<|message|>Compute it.<|end|>"
    "<|start|>assistant<|channel|>analysis to=python code<|message|>print(6*7)<|call|>"
    "<|start|>assistant<|channel|>final<|message|>6 × 7 = **42**<|return|>"
)


@pytest.fixture(scope="module")
def ip(tmp_path_factory):
    shell = ipython_shell()
    shell.run_line_magic("load_ext", "gptoss_lab")
    rec = tmp_path_factory.mktemp("rec") / "rec.txt"
    rec.write_text(RECORDING, encoding="utf-8")
    shell.user_ns["REC"] = str(rec)
    yield shell
    shell.run_line_magic("unload_ext", "gptoss_lab")


def cell(ip, line, body):
    with capture_output() as cap:
        ip.run_cell_magic("gptoss", line, body)
    return cap


def test_cell_before_any_model_is_a_usage_error(ip):
    ip.run_line_magic("gptoss", f"load replay:{ip.user_ns['REC']}")  # ensure the error below is about -r only
    with pytest.raises(UsageError, match="argument -r/--reasoning: invalid choice"):
        cell(ip, "-r extreme", "hi")
    with pytest.raises(UsageError, match="needs a message"):
        cell(ip, "", "   ")
    with pytest.raises(UsageError, match="-o takes a variable name"):
        cell(ip, "-o 1x", "hi")
    with pytest.raises(UsageError, match="unknown tool 'nope'"):
        cell(ip, "--tools nope", "hi")


def test_turn_result_and_bundle(ip):
    ip.run_line_magic("gptoss", f"load replay:{ip.user_ns['REC']}")
    ip.user_ns["a"], ip.user_ns["b"] = 6, 7
    cap = cell(ip, "--tools python -o res --seed 3 -r high", "What is {a}*{b}?")
    res = ip.user_ns["res"]
    assert ip.user_ns["_gptoss"] is res
    assert res.final == "6 × 7 = **42**"
    assert res.messages[0]["content"] == "What is 6*7?"  # {var} from the user's namespace
    assert [m for m in res.messages if m["role"] == "tool"][0]["content"] == "42\n"
    assert res.transcript["reasoning"] == "high" and res.transcript["sampling"]["seed"] == 3
    final = cap.outputs[-1].data
    # the panel gave way to the static bundle: no widget view left to say "Loading widget..." when saved
    assert final["text/markdown"] == "6 × 7 = **42**" and "application/vnd.jupyter.widget-view+json" not in final
    page = final["text/html"]
    assert "<script" not in page and "print(6*7)" in page and "42" in page and "<strong>42</strong>" in page
    assert "analysis: raw, unfiltered chain of thought" in page and "<details" in page and "python returned" in page
    assert final[MIME]["messages"] == res.messages
    assert "Reasoning: high" in __import__("gptoss_lab").encoding().decode_utf8(res.prompt_ids)


def test_only_braced_names_are_filled_in(ip):
    ip.run_line_magic("gptoss", f"load replay:{ip.user_ns['REC']}")
    ip.user_ns["price"], ip.user_ns["x"] = 5, 3
    cell(ip, "--new -o costs", "It costs $price; x is {x}; {missing} and {1+1} stay")
    assert ip.user_ns["costs"].messages[0]["content"] == "It costs $price; x is 3; {missing} and {1+1} stay"


def test_show_analysis_puts_it_in_the_markdown(ip):
    ip.run_line_magic("gptoss", f"load replay:{ip.user_ns['REC']}")
    cap = cell(ip, "--new --tools python --show-analysis", "again")
    md = cap.outputs[-1].data["text/markdown"]
    assert "raw, unfiltered chain of thought" in md and "> Compute it." in md and md.endswith("6 × 7 = **42**")


def test_conversation_state_reset_prompt_tools_status(ip, capsys):
    ip.run_line_magic("gptoss", f"load replay:{ip.user_ns['REC']}")
    cell(ip, "--tools python -o one", "first")
    ip.run_line_magic("gptoss", "prompt")
    shown = capsys.readouterr().out
    assert "<|start|>user<|message|>first<|end|>" in shown and shown.rstrip().endswith("<|start|>assistant")
    assert "## python" in shown  # the tool's declaration is in the system message
    ip.run_line_magic("gptoss", "tools")
    assert "Internet access for this session is disabled." in capsys.readouterr().out
    ip.run_line_magic("gptoss", "status")
    status = capsys.readouterr().out
    assert "moe_path   replay" in status and "1 turns" in status and "python sandbox: bwrap" in status
    ip.run_line_magic("gptoss", "reset")
    ip.run_line_magic("gptoss", "prompt")
    assert "first" not in capsys.readouterr().out


def test_line_magic_misuse(ip):
    with pytest.raises(UsageError, match="takes one of: load, status"):
        ip.run_line_magic("gptoss", "")
    with pytest.raises(UsageError, match="is neither a local folder"):
        ip.run_line_magic("gptoss", "load not-a-model")
    with pytest.raises(UsageError, match="cannot read the recording"):
        ip.run_line_magic("gptoss", "load replay:/no/such.txt")
    with pytest.raises(UsageError, match=r"nothing answers at http://127.0.0.1:9 "):  # a served model, refused
        ip.run_line_magic("gptoss", "load http://127.0.0.1:9 --engine llama.cpp")
    with pytest.raises(UsageError, match="invalid choice: 'ollama'"):
        ip.run_line_magic("gptoss", "load http://127.0.0.1:9 --engine ollama")


def test_the_magic_documents_itself(ip):
    doc = ip.find_cell_magic("gptoss").__doc__
    for option in ("--reasoning", "--tools", "--system", "--developer", "--new", "--output", "--max-tokens",
                   "--temperature", "--seed", "--show-analysis", "--inspect"):
        assert option in doc


def test_function_tools_from_the_namespace(ip, tmp_path):
    rec = tmp_path / "fn.txt"
    rec.write_text(
        "<|channel|>commentary to=functions.lookup <|constrain|>json<|message|>{\"key\": \"x\"}<|call|>"
        "<|start|>assistant<|channel|>final<|message|>done<|return|>", encoding="utf-8")
    ip.run_cell("def lookup(key: str) -> str:\n    '''Look a key up.'''\n    return key.upper() * 2")
    ip.run_line_magic("gptoss", f"load replay:{rec}")
    cell(ip, "--new --tools lookup -o fn", "look up x")
    res = ip.user_ns["fn"]
    assert [m["content"] for m in res.messages if m["role"] == "tool"] == ["XX"]


def test_ask_json_gives_the_same_transcript(ip, tmp_path):
    rec = Path(ip.user_ns["REC"])
    ip.run_line_magic("gptoss", f"load replay:{rec}")
    cell(ip, "--new --tools python -o via_magic", "What is 6*7?")
    out = subprocess.run(
        [str(Path(sys.executable).with_name("gptoss-lab")), "ask", "What is 6*7?", "--model", f"replay:{rec}",
         "--tools", "python", "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)  # exactly one JSON document on stdout; notes went to stderr
    assert doc["messages"] == ip.user_ns["via_magic"].transcript["messages"]
    assert doc["complete"] is True and "replay" in out.stderr


def test_ask_streams_labelled_channels(tmp_path):
    rec = tmp_path / "r.txt"
    rec.write_text(RECORDING, encoding="utf-8")
    out = subprocess.run(
        [str(Path(sys.executable).with_name("gptoss-lab")), "ask", "6*7?", "--model", f"replay:{rec}", "--tools", "python"],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "[analysis (raw chain of thought, unfiltered)]" in out.stdout
    assert "[analysis -> python]" in out.stdout and "[python returned]\n42" in out.stdout
    assert out.stdout.rstrip().endswith("6 × 7 = **42**")
    bad = subprocess.run([str(Path(sys.executable).with_name("gptoss-lab")), "ask", "x", "--model", "replay:/nope"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_reset_load_compare_and_a_second_turn_wait_for_a_running_turn(ip, tmp_path):
    slow = tmp_path / "slow.txt"
    slow.write_text("<|channel|>analysis<|message|>" + "think " * 400 + "<|end|>"
                    "<|start|>assistant<|channel|>final<|message|>done<|return|>", encoding="utf-8")
    ip.run_line_magic("gptoss", f"load replay:{slow} --tps 100")
    cell(ip, "--new", "warm up")  # the conversation exists
    magics = ip._gptoss_lab_magics
    magics.model.reset()
    running = magics.chat.start("a turn still running (as after Stop, winding down)")
    try:
        for line in ("reset", f"load replay:{slow}", 'compare "hi" --efforts low'):
            with pytest.raises(UsageError, match="turn is still running"):
                ip.run_line_magic("gptoss", line)
        with pytest.raises(UsageError, match="turn is still running"):
            cell(ip, "", "another")
    finally:
        running.stop()
        running.wait()
        running.thread.join(5)
    ip.run_line_magic("gptoss", "reset")  # fine once it has ended
    ip.run_line_magic("gptoss", f"load replay:{ip.user_ns['REC']}")


def test_reset_forgets_the_models_cached_prefix(ip, tmp_path):
    ip.run_line_magic("gptoss", "load tiny")
    cell(ip, "--new --max-tokens 4", "hello")
    magics = ip._gptoss_lab_magics
    assert magics.model._cache_ids  # the prefix cache holds the turn
    ip.run_line_magic("gptoss", "reset")
    assert magics.model._cache_ids == [] and magics.model._cache is None
    ip.run_line_magic("gptoss", f"load replay:{ip.user_ns['REC']}")


def test_the_kernels_interrupt_stops_a_cell_in_a_plain_shell_and_keeps_the_result(ip, tmp_path):
    import _thread
    import threading
    import time

    slow = tmp_path / "slow.txt"
    slow.write_text("<|channel|>analysis<|message|>" + "think " * 300 + "<|end|>"
                    "<|start|>assistant<|channel|>final<|message|>done<|return|>", encoding="utf-8")
    ip.run_line_magic("gptoss", f"load replay:{slow} --tps 100")
    threading.Timer(0.5, _thread.interrupt_main).start()
    t0 = time.monotonic()
    cell(ip, "--new -o cut", "think")
    assert time.monotonic() - t0 < 2.5
    assert ip.user_ns["cut"].stop_reason == "stopped"
    ip.run_line_magic("gptoss", f"load replay:{ip.user_ns['REC']}")


def test_a_refused_cell_changes_nothing_of_the_running_chat(ip, tmp_path):
    slow = tmp_path / "slow2.txt"
    slow.write_text("<|channel|>analysis<|message|>" + "think " * 400 + "<|end|>", encoding="utf-8")
    ip.run_line_magic("gptoss", f"load replay:{slow} --tps 100")
    cell(ip, "--new", "warm up")
    magics = ip._gptoss_lab_magics
    magics.model.reset()
    before = (magics.chat.reasoning, magics.chat.instructions, magics.chat.toolbox.names())
    running = magics.chat.start("running")
    try:
        with pytest.raises(UsageError, match="still running"):
            cell(ip, "-r high --developer HIJACK --tools python", "x")
        assert (magics.chat.reasoning, magics.chat.instructions, magics.chat.toolbox.names()) == before
    finally:
        running.stop()
        running.wait()
    ip.run_line_magic("gptoss", f"load replay:{ip.user_ns['REC']}")
