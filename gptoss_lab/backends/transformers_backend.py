"""gpt-oss in the running kernel, with transformers: ``gptoss_lab.load()``.

``load()`` finds the files (missing weights fail fast), decides the MoE path and checks the memory
before any weight is read, loads with transformers, and reports exactly what ran. The returned
backend streams token steps with optional logprobs and expert routing, and keeps a prefix KV cache
so that a tool loop's continuation only prefills what is new.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import ModelDoesNotFitError
from ..harmony.events import CALL, RETURN
from .base import Cancel, Capabilities, LayerRouting, LoadReport, Routing, TokenStep, cancelled
from .plan import MoePlan, detect_device, fit_message, plan_moe
from .presets import preset_for, size_of
from .source import Source, download, read_config, resolve

STOP_TOKENS = frozenset({RETURN, CALL})
CPU_ATTENTION = "gptoss_lab_cpu"  # gptoss_lab.cpu.attention.NAME: eager's math, bounded in memory
# A long prompt goes through the model on a CPU this many tokens at a time (as llama.cpp's batches do):
# its activations and the experts' grouped buffers stay a few hundred MB, where a 2k-token prompt in one
# pass took up to 1.2 GB more at its peak on 20b; 128 rows an expert still keep the prefill kernels busy.
CPU_PREFILL_CHUNK = 1024


class _Stopped(Exception):
    """Raised by a decoder layer's hook when ``cancel`` is set during a prefill; never leaves the backend."""


class _LibraryMessages(logging.Handler):
    """Collects what transformers says while it loads: its own words go into the report."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage().strip()
        if msg and msg not in self.messages:
            self.messages.append(msg)


def load(
    model: str | None = None,
    *,
    device: str = "auto",
    dtype: str | None = None,
    attn_implementation: str | None = None,
    check_fit: bool = True,
    moe: str = "auto",
) -> TransformersBackend:
    """Load a gpt-oss model into this process.

    Parameters
    ----------
    model
        A hub id (``openai/gpt-oss-20b``), a local checkpoint folder, ``"nano"`` (the small trained
        teaching model inside the package) or ``"tiny"`` (a random-weight checkpoint of the real
        architecture, made on first use). ``None``: the cached gpt-oss weights on a GPU, else nano
        (the report says which, and why).
    device
        ``"auto"`` (a CUDA GPU when torch sees one, else the CPU), ``"cuda"``, ``"cuda:N"`` or ``"cpu"``.
        On a CPU, MXFP4 checkpoints run on gptoss-lab's CPU engine: experts packed, dense weights bf16.
    dtype
        ``"float32"`` or ``"bfloat16"``; default float32 on CPU and bfloat16 on GPU. ``bfloat16`` on a
        CPU means transformers' dequantized path in bf16.
    attn_implementation
        Passed to transformers; default eager on CPU, and on GPU the attention-sinks flash kernel where
        it can be had (else eager, with a note).
    check_fit
        Refuse a model that will not fit in free memory (checked from the config, before any weight).
    moe
        ``"auto"`` (the packed path this machine can run), or ``"dequantized"``: transformers' own
        path, experts dequantized (float32 on CPU), for comparison.

    Raises
    ------
    WeightsNotFoundError
        The weights are not here and cannot be downloaded (no network): says how to get them.
    ModelDoesNotFitError
        The model needs more memory than is free: says what would fit.
    """
    t0 = time.perf_counter()
    chosen = None
    if model is None:
        from .source import default_model

        model, chosen = default_model()
    source = resolve(model)  # missing weights are the first thing a user must hear about
    dev = detect_device(device)
    preset = preset_for(source.hub_id or "") if source.path is None else None
    config = preset.shape if preset is not None else read_config(source)
    quantized = preset is not None or _is_mxfp4(config)
    plan = plan_moe(dev, dtype=dtype, quantized=quantized, moe=moe)
    size = size_of(config)
    fits, message, need = fit_message(model, size, plan, dev)
    if check_fit and not fits:
        raise ModelDoesNotFitError(
            message + " (load(..., check_fit=False) tries anyway)",
            model=model, needed_bytes=need, available_bytes=dev.free_bytes, device=dev.type,
        )
    if source.path is None:
        download(source)
    if not isinstance(config, dict):  # a preset sized the model before the download: read the real config now
        config = read_config(source)
    if plan.weights_key == "mxfp4-cpu":
        hf_model, attn, said = _cpu_engine(source, attn_implementation)
    else:
        hf_model, attn, said = _from_pretrained(source, config, dev, plan, attn_implementation)
    notes = [plan.reason] + plan.notes
    moe_path = _moe_path_in(hf_model, plan)
    as_planned = moe_path == plan.moe_path or (plan.moe_path == "mxfp4-cpu" and "fallback" not in moe_path)
    if not as_planned:
        notes.append(f"fell back from {plan.moe_path} to {moe_path}")
    notes += said
    if chosen:
        notes.insert(0, f"{model} was chosen because {chosen}")
    if source.marker and source.marker.get("random_weights"):
        notes.append("random weights (a gptoss-lab test checkpoint): the model generates noise; it tests set-ups, not answers")
    elif source.marker and source.marker.get("kind") == "nano":
        notes.append(nano_note(source.marker))
    report = LoadReport(
        model=model,
        kind=source.kind,
        path=str(source.path),
        device=str(hf_model.device) if dev.count == 1 or dev.type == "cpu" else f"{dev.count}x {dev.name}",
        dtype=plan.dtype,
        moe_path=moe_path,
        attn_implementation=attn,
        params=size.params,
        memory_bytes=int(hf_model.get_memory_footprint()),
        load_seconds=time.perf_counter() - t0,
        notes=notes,
        engine="transformers + gptoss-lab CPU MXFP4 engine" if moe_path.startswith("mxfp4-cpu") else "transformers",
    )
    return TransformersBackend(hf_model, report)


def _is_mxfp4(config: Any) -> bool:
    return isinstance(config, dict) and (config.get("quantization_config") or {}).get("quant_method") == "mxfp4"


def _cpu_engine(source: Source, attn: str | None) -> tuple[Any, str, list[str]]:
    from ..cpu import build, loader

    ops = build.ops()
    notes = [] if ops is not None else [f"the CPU kernels are not available ({build.why_not()}): the pure-torch fallback runs"]
    assert source.path is not None  # downloaded before this is called
    model = loader.load_model(source.path, ops, attn_implementation=attn or "eager")
    if ops is not None and ops.isa() != "scalar" and ops.fixed_point():
        notes.append("the experts take their activations as 24-bit fixed point per group of 32 (float32's precision: "
                     "the integer products are exact); gptoss_lab.cpu.build.ops().set_fixed_point(False) runs them on floats")
    embedding = model.model.embed_tokens
    if embedding.mapped:
        notes.append(f"the token embedding ({embedding.weight.numel() * embedding.weight.element_size() / 1e9:.2f} GB) "
                     "stays in the checkpoint's file, read a row per token: leave the files in place while it is loaded")
    return model, str(model.config._attn_implementation), notes


def nano_note(marker: dict[str, Any]) -> str:
    shape = marker.get("shape", {})
    return (
        f"gpt-oss-nano: the gpt-oss architecture at toy size ({shape.get('layers')} layers, hidden {shape.get('hidden')}, "
        f"{shape.get('experts')} experts top-{shape.get('top_k')}), trained by gptoss-lab on a synthetic Harmony corpus: "
        "arithmetic through the python tool, get_weather(city), 50 capitals, copying numbers. "
        "A teaching toy, not a capable model: outside those tasks it answers nonsense (model card: "
        "gptoss_lab/models/nano/README.md)"
    )


def _from_pretrained(
    source: Source, config: dict[str, Any], dev: Any, plan: MoePlan, attn: str | None
) -> tuple[Any, str, list[str]]:
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": getattr(torch, plan.dtype)}
    kwargs["device_map"] = "auto" if dev.type == "cuda" and dev.count > 1 else {"": "cuda" if dev.type == "cuda" else "cpu"}
    quantized = (config.get("quantization_config") or {}).get("quant_method") == "mxfp4"
    if quantized and plan.moe_path != "mxfp4-kernels":
        from transformers.utils.quantization_config import Mxfp4Config

        # Say it ourselves, with the reason, instead of letting transformers fall back on its own.
        kwargs["quantization_config"] = Mxfp4Config(dequantize=True)
    wanted = attn or ("eager" if dev.type == "cpu" else "kernels-community/vllm-flash-attn3")
    handler = _LibraryMessages()
    tf_logger = logging.getLogger("transformers")
    tf_logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            kwargs["output_loading_info"] = True
            loaded: Any  # (model, loading info) with output_loading_info
            try:
                loaded = AutoModelForCausalLM.from_pretrained(str(source.path), attn_implementation=wanted, **kwargs)
            except Exception as e:  # the attention kernel could not be had: eager attention still works
                if wanted == "eager" or attn is not None:
                    raise
                handler.messages.append(f"attention kernel {wanted} unavailable ({type(e).__name__}: {e}); using eager")
                wanted = "eager"
                loaded = AutoModelForCausalLM.from_pretrained(str(source.path), attn_implementation=wanted, **kwargs)
    finally:
        tf_logger.removeHandler(handler)
    model, info = loaded
    said = [f"transformers said: {_plain(m)}" for m in handler.messages if "LOAD REPORT" not in m]
    said += [f"transformers said: {w.message}" for w in caught if "gpt" in str(w.message).lower() or "mxfp4" in str(w.message).lower()]
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        # e.g. transformers 5.22.2 saving a dequantized model under *_blocks names: the reload is random.
        said.insert(0, f"WARNING: the checkpoint lacks {len(missing)} tensors ({', '.join(missing[:3])}"
                       f"{', ...' if len(missing) > 3 else ''}); transformers initialised them at random")
    if plan.dtype == "float32":
        # transformers dequantizes MXFP4 experts to bf16 even when float32 is asked for.
        model = model.float()
    model.eval()
    return model, str(model.config._attn_implementation), said


def _plain(message: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", message)


def _moe_path_in(model: Any, plan: MoePlan) -> str:
    experts = model.model.layers[0].mlp.experts
    if type(experts).__name__ == "PackedExperts":
        from ..cpu import engine_label

        return engine_label(experts.ops)
    if type(experts).__name__ == "Mxfp4GptOssExperts":
        return "mxfp4-kernels"
    dtype = str(experts.gate_up_proj.dtype).replace("torch.", "")
    return f"dequantized-{dtype}"


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class TransformersBackend:
    """A loaded gpt-oss model: ``.model`` (transformers), ``.report``, and ``.stream()``.

    The KV cache of the last stream is kept (``kvcache.GrowingCache``: transformers' cache, grown in steps): a prompt that extends the previous prompt and its output
    (a tool loop appending a tool reply) prefills only the new tokens; a prompt that diverges reuses
    the cache up to the divergence. Every layer keeps its full history (sliding-window layers too) so
    the cache can always be cut back; the memory this costs is small next to the weights
    (gpt-oss-20b: ~48 KB per token in bf16).
    """

    def __init__(self, model: Any, report: LoadReport):
        self.model = model
        self.report = report
        config = model.config
        self.capabilities = Capabilities(
            logprobs=True,
            routing=True,
            # the sinks' share is read from the attention weights, which only eager attention returns
            sinks=config._attn_implementation in ("eager", CPU_ATTENTION),
            prefix_cache=True,
            context_length=getattr(config, "max_position_embeddings", None),
            experts=getattr(config, "num_local_experts", None),
        )
        self.stop_tokens = STOP_TOKENS
        self._cache: Any = None
        self._cache_ids: list[int] = []
        self._busy = threading.Lock()
        self.last_prefill: dict[str, int] = {}

    def __repr__(self) -> str:
        r = self.report
        return f"<gptoss-lab model {r.model!r}: {r.moe_path}, {r.attn_implementation} attention, {r.device}, {r.dtype}>"

    def _repr_markdown_(self) -> str:
        return self.report._repr_markdown_()

    @property
    def device(self) -> Any:
        return self.model.device

    def reset(self) -> None:
        """Forget the cached prefix: the next stream prefills its whole prompt. Refused while a
        stream runs (it would go on with no context)."""
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("this model is streaming; finish or close that stream before reset()")
        try:
            self._drop_cache()
        finally:
            self._busy.release()

    def _drop_cache(self) -> None:
        self._cache, self._cache_ids = None, []

    # -- the forward passes -------------------------------------------------------------------------

    def _forward(self, ids: Sequence[int], cancel: Cancel = None) -> Any:
        """Feed ``ids`` (on a CPU, ``CPU_PREFILL_CHUNK`` at a time) and return the last position's logits.

        With ``cancel``, a prompt of several tokens is checked before each decoder layer: once it is set
        the pass stops there, the cache is cut back to the chunks that were fed whole (they stay cached,
        so the next stream of this prompt prefills only the rest) and ``None`` is returned.
        """
        import torch

        ids = list(ids)
        step = CPU_PREFILL_CHUNK if self.model.device.type == "cpu" else max(1, len(ids))
        hooks = self._cancel_hooks(cancel) if cancel is not None and len(ids) > 1 else []
        out = None
        try:
            with torch.inference_mode():
                for i in range(0, len(ids), step):
                    fed = len(self._cache_ids)
                    try:
                        out = self.model(
                            input_ids=torch.tensor([ids[i : i + step]], device=self.model.device),
                            past_key_values=self._cache,
                            use_cache=True,
                            logits_to_keep=1,  # never materialise (T, 201088) logits for a long prompt
                        )
                    except _Stopped:
                        self._cut_cache(fed)
                        return None
                    self._cache_ids.extend(ids[i : i + step])
        except BaseException:
            self._drop_cache()  # a half-updated cache would silently give wrong output next time
            raise
        finally:
            for h in hooks:
                h.remove()
        assert out is not None
        return out.logits[0, -1]

    def _cancel_hooks(self, cancel: Cancel) -> list[Any]:
        def check(module: Any, args: tuple) -> None:
            if cancelled(cancel):
                raise _Stopped

        return [layer.register_forward_pre_hook(check) for layer in self.model.model.layers]

    def _cut_cache(self, length: int) -> None:
        """Every cache layer back to ``length`` tokens (a stopped pass fed some layers and not others)."""
        for layer in getattr(self._cache, "layers", []):
            extra = layer.get_seq_length() - length
            if extra > 0:
                layer.crop(-extra)

    def prefill(self, prompt_ids: Sequence[int], cancel: Cancel = None) -> Any:
        """Bring the cache up to ``prompt_ids`` and return the logits for the next token (``None`` if
        ``cancel`` stopped it: the cache then holds the prompt's first chunks, see ``_forward``)."""
        from .kvcache import GrowingCache

        prompt = list(prompt_ids)
        keep = min(common_prefix(self._cache_ids, prompt), len(prompt) - 1)
        if self._cache is None or keep == 0:
            self._cache, self._cache_ids, keep = GrowingCache(), [], 0
        elif keep < len(self._cache_ids):
            self._cache.crop(keep - len(self._cache_ids))  # a negative count removes tokens
            del self._cache_ids[keep:]
        self.last_prefill = {"cached": keep, "prefilled": len(prompt) - keep}
        return self._forward(prompt[keep:], cancel)

    # -- sampling -----------------------------------------------------------------------------------

    @staticmethod
    def _pick(logits: Any, temperature: float, top_p: float, gen: Any, k: int) -> tuple[int, float | None, tuple]:
        import torch

        logits = logits.float()
        # With logprobs: one top-k and one logsumexp over the vocabulary (log p = logit - logsumexp),
        # instead of a log-softmax, a top-k and an argmax: the greedy pick is the top-k's first unless tied.
        top = torch.topk(logits, max(k, 2)) if k else None
        if temperature <= 0:
            if top is not None and float(top.values[0]) > float(top.values[1]):
                token = int(top.indices[0])
            else:
                token = int(torch.argmax(logits))
        else:
            probs = torch.softmax(logits / temperature, dim=-1)
            if top_p < 1.0:
                sorted_p, order = torch.sort(probs, descending=True)
                keep = torch.cumsum(sorted_p, 0) - sorted_p < top_p  # always keeps the first
                probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_p[keep])
            token = int(torch.multinomial(probs, 1, generator=gen))
        if top is None:
            return token, None, ()
        lse = torch.logsumexp(logits, dim=-1)
        alts = tuple(zip(top.indices[:k].tolist(), (top.values[:k] - lse).tolist()))
        return token, float(logits[token] - lse), alts

    def _routing_hooks(self, store: dict[int, LayerRouting]) -> list[Any]:
        def make(i: int, router: Any) -> Any:
            # A pre-hook on the MLP, not a hook on the router: a hub kernel's MLP (megablocks on a GPU) never
            # calls the router module. The router's own forward (no hooks) computes what the MLP routes by.
            def hook(module: Any, args: tuple) -> None:
                h = args[0].reshape(-1, args[0].shape[-1])[-1:]  # the last position: the token just fed
                _, weights, idx = router.forward(h)  # (1, k) each
                store[i] = LayerRouting(tuple(idx[0].tolist()), tuple(weights[0].tolist()))

            return hook

        return [
            layer.mlp.register_forward_pre_hook(make(i, layer.mlp.router))
            for i, layer in enumerate(self.model.model.layers)
        ]

    def _sink_hooks(self, store: dict[int, tuple[float, ...]]) -> list[Any]:
        def make(i: int) -> Any:
            def hook(module: Any, args: tuple, output: Any) -> None:
                weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
                if weights is not None:  # (B, heads, q, k), the sink's column already dropped
                    store[i] = tuple((1.0 - weights[0, :, -1, :].float().sum(-1)).tolist())

            return hook

        return [layer.self_attn.register_forward_hook(make(i)) for i, layer in enumerate(self.model.model.layers)]

    # -- streaming ----------------------------------------------------------------------------------

    def stream(
        self,
        prompt_ids: Sequence[int],
        *,
        max_tokens: int = 2048,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        logprobs: int = 0,
        routing: bool = False,
        sinks: bool = False,
        cancel: Cancel = None,
    ) -> Iterator[TokenStep]:
        """Generate token steps after ``prompt_ids`` as they come.

        Stops after ``<|return|>`` or ``<|call|>`` (the stop token is the last step), after
        ``max_tokens``, or within one token once ``cancel`` (an Event or a callable) is set (within
        one decoder layer while a prompt is prefilled: on a CPU a long prompt takes minutes).
        ``temperature=0`` is greedy. ``logprobs=K`` adds the chosen token's logprob and the top-K
        alternatives; ``routing=True`` adds each token's experts per layer, and ``sinks=True`` the
        share of attention each layer's heads gave their sink (eager attention only; no hooks otherwise).
        """
        import torch

        if not prompt_ids:
            raise ValueError("stream() needs at least one prompt token")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("this model is already streaming; finish or close that stream first")
        store: dict[int, LayerRouting] = {}
        sink_store: dict[int, tuple[float, ...]] = {}
        sinks = sinks and self.capabilities.sinks
        hooks: list[Any] = []
        try:
            hooks += self._routing_hooks(store) if routing else []
            hooks += self._sink_hooks(sink_store) if sinks else []
            if cancelled(cancel):
                return
            gen = None
            if seed is not None:
                gen = torch.Generator(device=self.model.device).manual_seed(seed)
            logits = self.prefill(prompt_ids, cancel)
            if logits is None:  # stopped during the prompt
                return
            for i in range(max_tokens):
                token, lp, alts = self._pick(logits, temperature, top_p, gen, logprobs)
                if token in self.stop_tokens or i == max_tokens - 1:
                    yield TokenStep(token, lp, alts, None)  # never fed: no routing
                    return
                if routing or sinks:
                    store.clear()
                    sink_store.clear()
                    logits = self._forward([token])
                    step_routing: Routing | None = tuple(store[j] for j in range(len(store))) if routing else None
                    step_sinks = tuple(sink_store[j] for j in range(len(sink_store))) if sinks else None
                    yield TokenStep(token, lp, alts, step_routing, step_sinks)
                else:
                    yield TokenStep(token, lp, alts)
                    if cancelled(cancel):
                        return
                    logits = self._forward([token])
                if cancelled(cancel):
                    return
        finally:
            for h in hooks:
                h.remove()
            self._busy.release()
