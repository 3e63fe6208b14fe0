"""The backend contract: prompt token ids in, a stream of generated token steps out.

A backend knows nothing of Harmony or widgets (DESIGN.md). Everything the session, the magics and the
display may ask of one is here, in :class:`Backend`; nothing else is looked up on a backend object.
``tests/test_backend_contract.py`` checks every backend against it: the transformers backend (the
model in this kernel: ``tiny``, ``nano``, gpt-oss), the replay backend, and every later one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple, Protocol, Union, runtime_checkable


class LayerRouting(NamedTuple):
    """One layer's choice for one token: the top-k expert ids, most weight first, and their weights.
    A tuple (``ids, weights = layer`` works), printed with its names."""

    experts: tuple[int, ...]
    weights: tuple[float, ...]

    def __repr__(self) -> str:
        return f"LayerRouting(experts={list(self.experts)}, weights=[{', '.join(f'{w:.3f}' for w in self.weights)}])"


# Per layer: the ids of the top-k experts that processed the token, and their weights.
Routing = tuple[LayerRouting, ...]
Cancel = Union[threading.Event, Callable[[], bool], None]


def _text(token: int) -> str:
    """A token id's text, for printing."""
    from ..harmony.vocab import encoding

    try:
        return encoding().decode([token])
    except Exception:  # an id outside the vocabulary (a replay can hold anything)
        return "?"


@dataclass(frozen=True, slots=True)
class TokenStep:
    """One generated token.

    ``logprob`` and ``alternatives`` (the top-K ``(token, logprob)`` pairs, most likely first) are set
    when logprobs were asked for; they come from the model's own distribution (log-softmax of the
    logits, before temperature). ``routing`` is set when routing was asked for: the experts that
    processed this token as input, so a turn's last token (the stop token, never fed) has none.
    ``sinks`` is set when asked for and the attention exposes its weights (eager attention): per layer,
    per head, the share of this token's attention that the learned sink absorbed.
    """

    token: int
    logprob: float | None = None
    alternatives: tuple[tuple[int, float], ...] = ()
    routing: Routing | None = None
    sinks: tuple[tuple[float, ...], ...] | None = None

    def __repr__(self) -> str:
        parts = [f"token={self.token} {_text(self.token)!r}"]
        if self.logprob is not None:
            parts.append(f"logprob={self.logprob:.3f}")
        if self.alternatives:
            parts.append("alternatives=[" + ", ".join(f"{t} {_text(t)!r} {lp:.3f}" for t, lp in self.alternatives) + "]")
        if self.routing is not None:
            parts.append(f"routing=<{len(self.routing)} layers, layer 0: experts {list(self.routing[0].experts) if self.routing else []}>")
        if self.sinks is not None:
            parts.append(f"sinks=<{len(self.sinks)} layers>")
        return f"TokenStep({', '.join(parts)})"


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a backend can return besides token ids, and how much it can hold.

    A step carries ``logprob``/``alternatives`` exactly when ``logprobs`` is true and they were asked
    for; likewise ``routing`` and ``sinks``. ``prefix_cache``: a prompt that extends the previous one
    prefills only what is new. ``context_length``: the most tokens of prompt and output together
    (None: not known). ``experts``: experts per MoE layer, the width of a routing table (None: no routing).
    """

    logprobs: bool = False
    routing: bool = False
    sinks: bool = False
    prefix_cache: bool = False
    context_length: int | None = None
    experts: int | None = None


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


@dataclass
class LoadReport:
    """What runs: the engine, device, dtype, MoE path, attention, size, time, and a note for every fallback.

    ``engine`` names the code that computes the tokens (``transformers``, ``replay``); ``kind`` says
    where the model came from (``nano``, ``tiny``, ``local``, ``hub``, ``replay``).
    """

    model: str
    kind: str
    path: str
    device: str
    dtype: str
    moe_path: str
    attn_implementation: str
    params: int
    memory_bytes: int
    load_seconds: float
    notes: list[str] = field(default_factory=list)
    engine: str = "transformers"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        lines = [
            f"model      {self.model} ({self.kind}: {self.path})",
            f"engine     {self.engine}",
            f"device     {self.device}",
            f"dtype      {self.dtype}",
            f"moe_path   {self.moe_path}",
            f"attention  {self.attn_implementation}",
            f"params     {self.params / 1e9:.3f} B" if self.params >= 1e8 else f"params     {self.params / 1e6:.1f} M",
            f"memory     {_gb(self.memory_bytes)}",
            f"loaded in  {self.load_seconds:.1f} s",
        ]
        lines += [f"note       {n}" for n in self.notes]
        return "\n".join(lines)

    def _repr_markdown_(self) -> str:
        return "```text\n" + str(self) + "\n```"


@runtime_checkable
class Backend(Protocol):
    """A model engine, as the session sees it.

    ``report``
        A :class:`LoadReport`: what runs, shown by ``%gptoss status`` and the panel's header.
    ``capabilities``
        A :class:`Capabilities`: what :meth:`stream` can add to its steps.
    ``stream(prompt_ids, ...)``
        Yields the generated :class:`TokenStep` values after ``prompt_ids``. It stops after
        ``<|return|>`` or ``<|call|>`` (the stop token is the last step), after ``max_tokens`` steps,
        or within one token once ``cancel`` (an Event or a callable) says stop (a local model also
        stops within one decoder layer while it prefills a prompt, keeping what it fed whole in its
        prefix cache; a remote engine sees it when its server sends the next token). ``temperature=0`` is
        greedy; with a ``seed`` the same prompt gives the same steps. ``logprobs=K`` (K > 0) adds the
        chosen token's logprob and the top-K alternatives, ``routing`` the experts per layer, ``sinks``
        the attention sinks' share, each only where ``capabilities`` says the backend has it.
    ``reset()``
        Forget every cached prefix (and, for a recording, start it again): the next stream begins
        from nothing. ``%gptoss reset`` calls it.
    """

    report: LoadReport
    capabilities: Capabilities

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
    ) -> Iterator[TokenStep]: ...

    def reset(self) -> None: ...


def cancelled(cancel: Cancel) -> bool:
    """True once ``cancel`` (an Event or a callable) says stop."""
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())
