"""The magics in a real kernel (jupyter_client), comm messages captured, as a notebook front end sees them."""

from __future__ import annotations

import json
import queue
import time
from pathlib import Path

import pytest
from jupyter_client.manager import KernelManager

from gptoss_lab.display.bundle import MIME

WIDGET = "application/vnd.jupyter.widget-view+json"
# The recording says the tool printed 999; the sandbox really prints 408, and that is what must show.
RECORDING = (
    "<|channel|>analysis<|message|>We need 12*34. Use python.<|end|>"
    "<|start|>assistant<|channel|>analysis to=python code<|message|>print(12*34)<|call|>"
    "<|start|>python to=assistant<|channel|>analysis<|message|>999\n<|end|>"
    "<|start|>assistant<|channel|>final<|message|>12 × 34 = **408**.<|return|>\n"
)


@pytest.fixture(scope="module")
def kernel():
    km = KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(Path(__file__).parent))
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    reply, _ = execute(kc, "%load_ext gptoss_lab")
    assert reply["content"]["status"] == "ok", reply["content"]
    yield km, kc
    kc.stop_channels()
    km.shutdown_kernel(now=True)


def execute(kc, code, timeout=120, during=None):
    """Run code; return (reply, iopub messages). ``during(elapsed)`` is called while waiting."""
    msg_id = kc.execute(code)
    msgs = []
    t0 = time.monotonic()
    while True:
        if during is not None:
            during(time.monotonic() - t0)
        try:
            msg = kc.get_iopub_msg(timeout=0.1)
        except queue.Empty:
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(code) from None
            continue
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        msg["received"] = time.monotonic() - t0
        msgs.append(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    reply = kc.get_shell_msg(timeout=timeout)
    return reply, msgs


def value(kc, expr):
    reply, msgs = execute(kc, expr)
    assert reply["content"]["status"] == "ok", reply["content"]
    results = [m for m in msgs if m["msg_type"] == "execute_result"]
    return results[-1]["content"]["data"]["text/plain"] if results else None


def test_replay_with_a_real_python_call(kernel, tmp_path):
    km, kc = kernel
    rec = tmp_path / "rec.txt"
    rec.write_text(RECORDING, encoding="utf-8")
    reply, _ = execute(kc, f"%gptoss load replay:{rec}")
    assert reply["content"]["status"] == "ok", reply["content"]
    reply, msgs = execute(kc, "%%gptoss --tools python -o r\nWhat is 12*34?")
    assert reply["content"]["status"] == "ok", reply["content"]
    shown = [m for m in msgs if m["msg_type"] == "display_data"]
    assert shown and WIDGET in shown[0]["content"]["data"]  # the cell shows a widget
    opened = [m for m in msgs if m["msg_type"] == "comm_open"]
    assert any(m["content"]["data"]["state"].get("_esm") for m in opened)  # an anywidget
    custom = [m for m in msgs if m["msg_type"] == "comm_msg" and m["content"]["data"].get("method") == "custom"]
    assert custom, "live updates go as custom messages"
    final = [m for m in msgs if m["msg_type"] == "update_display_data"][-1]["content"]["data"]
    # the live panel gave way, in place, to the static bundle: the saved notebook needs no widget
    assert WIDGET not in final and "408" in final["text/markdown"] and "print(12*34)" in final["text/html"]
    closed = [m for m in msgs if m["msg_type"] == "comm_close"]
    assert closed, "the panel's widget is closed once its turn is over"
    transcript = final[MIME]
    roles = [(m["role"], m["recipient"]) for m in transcript["messages"]]
    assert ("assistant", "python") in roles and ("tool", "assistant") in roles
    tool = [m for m in transcript["messages"] if m["role"] == "tool"][0]
    assert tool["name"] == "python" and tool["content"] == "408\n"  # run for real, not the recording's 999
    assert transcript["messages"][-1]["content"] == "12 × 34 = **408**."
    assert transcript["complete"] is True and transcript["prompt_ids"]
    assert value(kc, "r.final") == "'12 × 34 = **408**.'"
    assert value(kc, "_gptoss is r") == "True"
    assert json.loads(value(kc, "import json; json.dumps(r.transcript['sampling'])").strip("'"))["temperature"] == 1.0


def test_misuse_is_one_line(kernel):
    km, kc = kernel
    reply, msgs = execute(kc, "%%gptoss -r extreme\nhi")
    assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "UsageError"
    reply, _ = execute(kc, "%gptoss frobnicate")
    assert reply["content"]["ename"] == "UsageError" and "load" in reply["content"]["evalue"]
    reply, _ = execute(kc, "%gptoss load /no/such/folder")
    assert reply["content"]["ename"] == "UsageError" and "/no/such/folder" in reply["content"]["evalue"]
    assert value(kc, "1 + 1") == "2"


def long_recording(path: Path, words: int) -> str:
    text = " ".join(f"w{i}" for i in range(words))
    path.write_text(f"<|channel|>analysis<|message|>{text}<|end|><|start|>assistant<|channel|>final<|message|>done<|return|>",
                    encoding="utf-8")
    return text


def test_streaming_20k_tokens_is_coalesced_and_nothing_is_lost(kernel, tmp_path):
    km, kc = kernel
    rec = tmp_path / "long.txt"
    text = long_recording(rec, 9000)  # ~20k tokens
    execute(kc, f"%gptoss load replay:{rec} --tps 4000")
    reply, msgs = execute(kc, "%%gptoss --new --max-tokens 30000 -o long\nthink a lot")
    assert reply["content"]["status"] == "ok", reply["content"]
    comm = [m for m in msgs if m["msg_type"] == "comm_msg"]
    seconds = max(m["received"] for m in comm) - min(m["received"] for m in comm)
    assert seconds > 3  # paced: the rate is measured over a real stream
    assert len(comm) / seconds <= 30
    sent = sum(len(json.dumps(m["content"]["data"], ensure_ascii=False).encode()) for m in comm)
    assert sent <= 3 * len(text.encode())
    final = [m for m in msgs if m["msg_type"] == "update_display_data"][-1]["content"]["data"][MIME]
    assert final["messages"][1]["content"] == text  # every word
    assert value(kc, "len(long.transcript['rounds'][0]['generated_ids']) > 18000") == "True"


def test_kernel_interrupt_stops_and_keeps_the_partial_transcript(kernel, tmp_path):
    km, kc = kernel
    rec = tmp_path / "slow.txt"
    long_recording(rec, 2000)
    execute(kc, f"%gptoss load replay:{rec} --tps 50")
    sent = {}

    def interrupt(elapsed):
        if elapsed > 2 and "at" not in sent:
            sent["at"] = time.monotonic()
            km.interrupt_kernel()

    reply, msgs = execute(kc, "%%gptoss --new -o part\nthink slowly", during=interrupt)
    stopped_in = time.monotonic() - sent["at"]
    assert stopped_in < 3
    assert reply["content"]["status"] == "ok"
    assert value(kc, "part.stop_reason") == "'stopped'"
    assert value(kc, "part.messages[1]['content'].startswith('w0 w1')") == "True"
    assert value(kc, "part.transcript['complete']") == "False"
    assert value(kc, "2 + 2") == "4"  # the kernel stays usable


def press_stop(kc, code, *, after_output=False, after_seconds=0.0):
    """Run ``code`` and send what the panel's Stop button sends, from the front end, while the cell
    still runs: at the first live update, or ``after_seconds``. Returns (seconds from Stop to the
    cell's end, the panel header's statuses)."""
    msg_id = kc.execute(code)
    comm_id = stop_sent = None
    header_status = []
    t0 = time.monotonic()
    while True:
        msg = kc.get_iopub_msg(timeout=30)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "comm_open" and content["data"]["state"].get("_esm"):
            comm_id = content["comm_id"]
        live = kind == "comm_msg" and content["data"].get("method") == "custom"
        if comm_id and stop_sent is None and (live if after_output else time.monotonic() - t0 > after_seconds):
            stop = kc.session.msg("comm_msg", {"comm_id": comm_id, "data": {"method": "custom", "content": {"type": "stop"}}})
            kc.shell_channel.send(stop)
            stop_sent = time.monotonic()
        elif kind == "comm_msg" and "header" in content["data"].get("state", {}):
            header_status.append(content["data"]["state"]["header"].get("status"))
        elif kind == "status" and content["execution_state"] == "idle":
            break
        assert time.monotonic() - t0 < 60
    assert stop_sent is not None
    return time.monotonic() - stop_sent, header_status


def test_the_panels_stop_button_is_heard_while_the_cell_runs(kernel, tmp_path):
    km, kc = kernel
    rec = tmp_path / "stop.txt"
    long_recording(rec, 2000)
    execute(kc, f"%gptoss load replay:{rec} --tps 50")
    took, header_status = press_stop(kc, "%%gptoss --new -o halted\nthink slowly", after_output=True)
    assert took < 3
    assert header_status[-1] == "stopped"
    assert value(kc, "halted.stop_reason") == "'stopped'"
    assert value(kc, "len(halted.messages[1]['content']) < 2000 * 5")  == "True"  # cut short


SLEEPER = (  # written for this test in the Harmony format (not model output)
    "<|channel|>analysis<|message|>Sleep in python.<|end|>"
    "<|start|>assistant<|channel|>analysis to=python code<|message|>import time\ntime.sleep(60)<|call|>"
    "<|start|>assistant<|channel|>final<|message|>Slept.<|return|>"
)


def test_the_kernels_interrupt_stops_a_turn_while_python_runs(kernel, tmp_path):
    km, kc = kernel
    rec = tmp_path / "sleeper.txt"
    rec.write_text(SLEEPER, encoding="utf-8")
    execute(kc, f"%gptoss load replay:{rec}")
    sent = {}

    def interrupt(elapsed):
        if elapsed > 3 and "at" not in sent:  # the sandbox is sleeping by now
            sent["at"] = time.monotonic()
            km.interrupt_kernel()

    reply, msgs = execute(kc, "%%gptoss --new --tools python -o slept\nSleep a minute.", during=interrupt)
    assert time.monotonic() - sent["at"] < 3  # within 2 s of the interrupt, and the display
    assert reply["content"]["status"] == "ok"
    assert value(kc, "slept.stop_reason") == "'stopped'"
    assert value(kc, "[m['recipient'] for m in slept.messages].count('python')") == "1"  # the call is kept
    assert value(kc, "'interrupted' in slept.tool_results[0].text") == "True"
    assert value(kc, "2 + 2") == "4"


def test_the_panels_stop_button_stops_a_turn_while_python_runs(kernel, tmp_path):
    km, kc = kernel
    rec = tmp_path / "sleeper2.txt"
    rec.write_text(SLEEPER, encoding="utf-8")
    execute(kc, f"%gptoss load replay:{rec}")
    took, _ = press_stop(kc, "%%gptoss --new --tools python -o halted_tool\nSleep a minute.", after_seconds=3)
    assert took < 3
    assert value(kc, "halted_tool.stop_reason") == "'stopped'"


def test_cell_options_are_expanded_as_ipython_expands_a_magics_line(kernel, tmp_path):
    km, kc = kernel
    rec = tmp_path / "short.txt"
    rec.write_text("<|channel|>final<|message|>ok<|return|>", encoding="utf-8")
    execute(kc, f"%gptoss load replay:{rec}")
    execute(kc, "s = 41\nname = 'seeded'")
    reply, _ = execute(kc, "%%gptoss --new --seed {s + 1} -o $name\nhi")
    assert reply["content"]["status"] == "ok", reply["content"]
    assert value(kc, "seeded.transcript['sampling']['seed']") == "42"
