"""GPU benchmark on a machine with no network: real-size (gpt-oss-20b-shaped) random MXFP4 checkpoints.

    python benchmarks/gpu/bench_gpu.py [--shape 20b|120b|small] [--dir /tmp/gptoss-20b-random]

Builds the checkpoint on the machine (weights drawn at random in the official MXFP4 layout), loads it
with gptoss_lab.load() and reports the MoE path and its reason, load time, GPU memory, time to first
token (cold, and a cached tool-loop continuation at 4k tokens of history) and tokens/s, side by side
with transformers' own generate(). The hub's MXFP4 kernels (kernels-community/gpt-oss-triton-kernels)
cannot be fetched there and no registry package ships them, so with no local copy (LOCAL_KERNELS) the
report shows the dequantized-bf16 path, and says so.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

SHAPES = {
    "20b": dict(layers=24, experts=32),
    "120b": dict(layers=36, experts=128),
    "small": dict(layers=2, experts=4),  # a quick check of this script itself, on any machine
}


def main() -> None:
    import torch
    from transformers import GptOssConfig

    from gptoss_lab.backends.tiny import GENERATION_CONFIG, write_random_checkpoint
    from gptoss_lab.backends.transformers_backend import STOP_TOKENS, load

    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=sorted(SHAPES), default="20b")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args()
    s = SHAPES[args.shape]
    folder = Path(args.dir or f"/tmp/gptoss-{args.shape}-random")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    figures: dict = {"shape": args.shape, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu"}
    if not (folder / "model.safetensors.index.json").exists():
        t0 = time.perf_counter()
        config = GptOssConfig(num_hidden_layers=s["layers"], num_local_experts=s["experts"], **GENERATION_CONFIG)
        write_random_checkpoint(folder, config, device=device)
        figures["build_seconds"] = round(time.perf_counter() - t0, 1)
    m = load(str(folder))
    print(m.report)
    figures.update({k: v for k, v in m.report.as_dict().items() if k in ("moe_path", "attn_implementation", "dtype", "memory_bytes", "load_seconds", "notes")})
    if device == "cuda":
        figures["gpu_memory_after_load"] = torch.cuda.memory_allocated()

    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 199998, (64,), generator=g).tolist()

    def ours() -> float:
        m.reset()
        t0 = time.perf_counter()
        n = sum(1 for _ in m.stream(prompt, max_tokens=args.tokens, temperature=0))
        if device == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / n

    def bare() -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = m.model.generate(torch.tensor([prompt], device=m.device), max_new_tokens=args.tokens,
                                   min_new_tokens=args.tokens, do_sample=False, eos_token_id=sorted(STOP_TOKENS),
                                   pad_token_id=199999)
        if device == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / (out.shape[1] - len(prompt))

    ours(), bare()
    a = [ours() for _ in range(3)]
    b = [bare() for _ in range(3)]
    figures["stream_tokens_per_s"] = round(1 / statistics.median(a), 1)
    figures["generate_tokens_per_s"] = round(1 / statistics.median(b), 1)
    history = torch.randint(0, 199998, (4096,), generator=g).tolist()
    reply = [200006, 29010, 316, 28, 173781, 200005, 35644, 200008, 19, 200007, 200006, 173781]

    def ttft(ids: list[int]) -> float:
        t0 = time.perf_counter()
        next(iter(m.stream(ids, max_tokens=1, temperature=0)))
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    m.reset()
    figures["ttft_cold_4k_s"] = round(ttft(history + reply), 4)
    m.reset()
    first = [st.token for st in m.stream(history, max_tokens=8, temperature=0)]
    figures["ttft_continuation_4k_s"] = round(ttft(history + first + reply), 4)
    if device == "cuda":
        figures["gpu_peak_bytes"] = torch.cuda.max_memory_allocated()
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
