"""`gptoss-lab doctor` and `gptoss-lab init-tiny`, run as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXE = str(Path(sys.executable).with_name("gptoss-lab"))

# Sizes of the published checkpoints (bytes): MXFP4 as shipped, and everything in bf16.
TRUE_SIZES = {"gpt-oss-20b": (13.76e9, 41.8e9), "gpt-oss-120b": (65.2e9, 233.7e9)}


def run(*args, env=None, prefix=()):
    return subprocess.run([*prefix, EXE, *args], capture_output=True, text=True, timeout=120, env=env)


def test_doctor_json_offline(offline):
    out = run("doctor", "--json", prefix=offline)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert {"device", "torch", "moe_path", "models"} <= set(doc)
    assert doc["device"]["type"] in ("cpu", "cuda")
    assert doc["torch"].split("+")[0].count(".") == 2
    assert doc["moe_path"] in ("mxfp4-kernels", "dequantized-bf16", "mxfp4-cpu", "mxfp4-cpu (torch fallback)")
    for name, (mxfp4, bf16) in TRUE_SIZES.items():
        m = doc["models"][name]
        assert {"params", "weights_bytes_mxfp4", "weights_bytes_bf16", "fits", "would_use"} <= set(m)
        assert abs(m["weights_bytes_mxfp4"] / mxfp4 - 1) < 0.05
        assert abs(m["weights_bytes_bf16"] / bf16 - 1) < 0.05
        assert isinstance(m["fits"], bool) and m["would_use"]
        assert ("will not fit" in m["would_use"]) == (not m["fits"])
    assert doc["models"]["gpt-oss-20b"]["params"] == pytest.approx(20.9e9, rel=0.01)
    assert doc["models"]["gpt-oss-120b"]["params"] == pytest.approx(116.8e9, rel=0.01)


def test_doctor_on_this_cpu_machine_explains_the_path():
    doc = json.loads(run("doctor", "--json", "--device", "cpu").stdout)
    assert doc["moe_path"] == "mxfp4-cpu"
    assert "packed" in doc["why"] and "bf16" in doc["why"] and "moe='dequantized'" in doc["why"]
    text = run("doctor", "--device", "cpu").stdout
    assert "moe_path      mxfp4-cpu (float32)" in text and "gpt-oss-120b" in text


def test_doctor_says_20b_fits_a_machine_like_this_with_its_true_footprint():
    doc = json.loads(run("doctor", "--json", "--device", "cpu").stdout)
    m = doc["models"]["gpt-oss-20b"]
    # experts packed + dense bf16 (12.8 GiB) less the embedding mapped from the file (1.08 GiB), a 4k-token
    # float32 KV cache (0.4 GiB), the process itself
    assert 12.5 * 2**30 < m["needed_bytes"] < 14 * 2**30
    assert m["weights_bytes_cpu_engine"] == pytest.approx(12.83 * 2**30, rel=0.01)
    assert m["mapped_bytes_cpu_engine"] == 201088 * 2880 * 2
    assert m["fits"] == (m["needed_bytes"] <= doc["device"]["free_bytes"])
    if doc["device"]["total_bytes"] >= 20 * 2**30 and doc["device"]["free_bytes"] >= 15 * 2**30:  # this machine kind
        assert m["fits"] and "mxfp4-cpu on cpu" in m["would_use"]
    assert not doc["models"]["gpt-oss-120b"]["fits"] or doc["device"]["free_bytes"] > 60 * 2**30


def test_init_tiny_writes_a_loadable_checkpoint(tmp_path):
    out = run("init-tiny", str(tmp_path / "t"), "--seed", "5", "--layers", "3", "--hidden", "96", "--experts", "6", "--top-k", "3")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(tmp_path / "t")
    cfg = json.loads((tmp_path / "t" / "config.json").read_text())
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_local_experts"], cfg["num_experts_per_tok"]) == (3, 96, 6, 3)
    from gptoss_lab.backends.presets import size_of
    from gptoss_lab.backends.transformers_backend import load

    m = load(str(tmp_path / "t"))  # the CPU engine: packed weights are buffers, so count from the config
    assert m.report.params == size_of(cfg).params
    assert m.report.moe_path.startswith("mxfp4-cpu")
    steps = list(m.stream([200006, 1428, 200008], max_tokens=2, routing=True, seed=0))
    assert len(steps[0].routing) == 3 and len(steps[0].routing[0][0]) == 3


def test_init_tiny_same_seed_same_weights(tmp_path):
    for name in ("a", "b"):
        assert run("init-tiny", str(tmp_path / name), "--seed", "9").returncode == 0
    for shard in (tmp_path / "a").glob("*.safetensors"):
        assert shard.read_bytes() == (tmp_path / "b" / shard.name).read_bytes()


@pytest.mark.parametrize(
    ("args", "says"),
    [(["--hidden", "50"], "multiples of 32"), (["--top-k", "9"], "top-k must be between 1")],
)
def test_init_tiny_bad_shape_is_one_line(tmp_path, args, says):
    out = run("init-tiny", str(tmp_path / "x"), *args)
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0]
