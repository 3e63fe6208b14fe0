"""A gpt-oss model served by vLLM or llama.cpp, driven by token ids.

Chat APIs hide Harmony (channels arrive pre-parsed or merged, tool calls are re-parsed by the server,
logprobs are keyed by text). Here the lab keeps Harmony on its side: it renders the prompt to token ids,
the server only generates ids (vLLM's ``/v1/completions`` with ``prompt`` as a list of ids; llama.cpp's
``/completion``), and the parser, panels, sandbox and inspection views work as with the model in the
kernel. Which engine answers is found from its own endpoints (vLLM's ``/version``, llama.cpp's
``/props``); that it speaks ``o200k_harmony`` is checked before the first turn (the vocabulary's size,
and with llama.cpp the special tokens' text).

Stop: the stream's connection is closed, which both servers take as the request's abort. A server that
drops the connection mid-stream raises :class:`ServerError` with what it said; nothing is retried
mid-stream. An API key is read from an environment variable at each request, never kept.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Generator, Iterator, Sequence
from typing import Any

from ..errors import BackendError, GptossLabError
from .base import Cancel, Capabilities, LoadReport, TokenStep, cancelled

VOCAB = 201088  # o200k_harmony's size, special tokens included
SPECIALS = {200006: "<|start|>", 200005: "<|channel|>", 200008: "<|message|>", 200007: "<|end|>",
            200012: "<|call|>", 200002: "<|return|>"}
END, CALL, RETURN = 200007, 200012, 200002
STOPS = (RETURN, CALL)
CONNECT_SECONDS = 5.0
READ_SECONDS = 300.0  # the most a server may stay silent mid-stream (a long prefill on a CPU)
ENGINES = ("vllm", "llama.cpp")


class ServerError(BackendError, ConnectionError):
    """The server could not be reached, refused the request, or dropped the stream; its words are kept."""

    def __init__(self, message: str, *, url: str, status: int | None = None, server_said: str = ""):
        super().__init__(message)
        self.url = url
        self.status = status
        self.server_said = server_said


class NotGptOssError(GptossLabError, ValueError):
    """The served model does not speak gpt-oss's Harmony format (o200k_harmony)."""


def _words(body: str) -> str:
    """A server's error body as one line: the message inside its JSON when there is one."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.strip().splitlines()[0][:300] if body.strip() else ""
    err = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(err, dict):
        return str(err.get("message") or err)[:300]
    return str(err)[:300]


class RemoteBackend:
    """``gptoss_lab.load("http://HOST:PORT")``: see the module's help.

    ``engine`` (``vllm`` or ``llama.cpp``) skips the detection; ``served_model`` picks one of the
    server's models (vLLM may serve several under names); ``api_key_env`` names the environment variable
    that holds the key.
    """

    def __init__(self, url: str, *, engine: str | None = None, served_model: str | None = None,
                 api_key_env: str | None = None):
        import httpx

        if engine is not None and engine not in ENGINES:
            raise ValueError(f"--engine takes {' or '.join(ENGINES)}, not {engine!r}")
        if api_key_env is not None and not os.environ.get(api_key_env):
            raise ValueError(f"--api-key-env {api_key_env}: that environment variable is not set")
        self.url = url.rstrip("/")
        self._key_env = api_key_env
        # A new connection per request: a kept-alive one that the server closes just as a request goes out
        # reads as "disconnected without a response" (seen with llama-server), and nothing is retried here.
        self._http = httpx.Client(timeout=httpx.Timeout(READ_SECONDS, connect=CONNECT_SECONDS),
                                  limits=httpx.Limits(max_keepalive_connections=0))
        t0 = time.monotonic()
        self.engine, self.version = self._detect(engine)
        self.served_model, self.context_length = self._model(served_model)
        self._check_harmony()
        notes = [f"served by {self.engine} {self.version} at {self.url}: the lab renders Harmony and parses "
                 "what the server generates, token ids both ways",
                 "returns logprobs and alternatives by token id; expert routing and attention sinks: not "
                 f"returned by {self.engine} (vLLM returns routed experts on GPUs only, at a request's end)"]
        if api_key_env:
            notes.append(f"API key read from ${api_key_env} at each request (never stored)")
        self.report = LoadReport(
            model=self.served_model, kind="remote", path=self.url, device="server", dtype="the server's",
            moe_path=f"served ({self.engine})", attn_implementation="the server's", params=0, memory_bytes=0,
            load_seconds=round(time.monotonic() - t0, 2), notes=notes, engine=f"{self.engine} {self.version}",
        )
        self.capabilities = Capabilities(logprobs=True, routing=False, sinks=False, prefix_cache=True,
                                         context_length=self.context_length, experts=None)

    # -- talking to the server ----------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self._key_env, "") if self._key_env else ""
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _fail(self, e: Exception, what: str) -> ServerError:
        import httpx

        if isinstance(e, httpx.ConnectError):
            return ServerError(f"nothing answers at {self.url} ({what}): connection refused or no such host; start "
                               "the server (gptoss-lab serve-test-model for a local one) or check the address", url=self.url)
        if isinstance(e, httpx.TimeoutException):
            return ServerError(f"{self.url} did not answer in time ({what}): {type(e).__name__}", url=self.url)
        return ServerError(f"{self.url} dropped the connection ({what}): {e or type(e).__name__}", url=self.url,
                           server_said=str(e))

    def _call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> tuple[int, Any]:
        """(status, the body as JSON, or as text when it is not JSON)."""
        import httpx

        try:
            r = self._http.request(method, self.url + path, json=payload, headers=self._headers())
        except httpx.HTTPError as e:
            raise self._fail(e, f"{method} {path}") from None
        try:
            return r.status_code, r.json()
        except ValueError:
            return r.status_code, r.text

    def _get(self, path: str) -> tuple[int, Any]:
        return self._call("GET", path)

    def _refused(self, status: int, body: Any, what: str) -> ServerError:
        said = _words(body if isinstance(body, str) else json.dumps(body))
        if status in (401, 403):
            key = f"the key from ${self._key_env}" if self._key_env else "no API key (pass --api-key-env VAR)"
            return ServerError(f"{self.url} refused {key} ({status}): {said}", url=self.url, status=status, server_said=said)
        return ServerError(f"{self.url} refused {what} ({status}): {said}", url=self.url, status=status, server_said=said)

    def _detect(self, engine: str | None) -> tuple[str, str]:
        if engine in (None, "vllm"):
            status, body = self._get("/version")
            if status in (401, 403):
                raise self._refused(status, body, "GET /version")
            if status == 200 and isinstance(body, dict) and "version" in body:
                return "vllm", str(body["version"])
        if engine in (None, "llama.cpp"):
            status, body = self._get("/props")
            if status in (401, 403):
                raise self._refused(status, body, "GET /props")
            if status == 200 and isinstance(body, dict) and ("build_info" in body or "default_generation_settings" in body):
                return "llama.cpp", str(body.get("build_info") or "unknown build")
        raise ServerError(f"{self.url} answers, but not as vLLM (/version) or llama.cpp (/props): a token-id "
                          "engine is needed (chat-only servers hide Harmony)", url=self.url)

    def _model(self, wanted: str | None) -> tuple[str, int | None]:
        status, body = self._get("/v1/models")
        if status != 200 or not isinstance(body, dict):
            raise self._refused(status, body, "GET /v1/models")
        models = body.get("data") or []
        names = [m.get("id") for m in models]
        if wanted is not None and wanted not in names:
            raise ValueError(f"{self.url} serves {', '.join(map(str, names)) or 'no model'}, not {wanted!r} (--served-model)")
        chosen = next((m for m in models if m.get("id") == wanted), models[0] if models else None)
        if chosen is None:
            raise ServerError(f"{self.url} serves no model", url=self.url)
        meta = chosen.get("meta") or {}
        if self.engine == "llama.cpp" and meta.get("n_vocab") not in (None, VOCAB):
            raise NotGptOssError(f"{self.url} serves {chosen['id']} with a vocabulary of {meta['n_vocab']} tokens, "
                                 f"not gpt-oss's o200k_harmony ({VOCAB}): load a gpt-oss model there")
        context = chosen.get("max_model_len") or meta.get("n_ctx_train")
        return str(chosen["id"]), int(context) if context else None

    def _check_harmony(self) -> None:
        """A one-token request on Harmony's special tokens and the vocabulary's last id: a model with a
        smaller vocabulary refuses it; llama.cpp also names the special tokens."""
        if self.engine == "llama.cpp":
            status, body = self._call("POST", "/detokenize", {"tokens": list(SPECIALS)})
            if status == 200 and isinstance(body, dict) and body.get("content") != "".join(SPECIALS.values()):
                raise NotGptOssError(f"{self.url}'s model does not render gpt-oss's special tokens "
                                     f"(got {str(body.get('content'))[:80]!r}): it is not a gpt-oss model")
        try:
            for _ in self._raw([200006, VOCAB - 1, 200008], max_tokens=1, temperature=0.0, top_p=1.0, seed=0, logprobs=0):
                pass
        except ServerError as e:
            if (e.status is not None and 400 <= e.status < 500) or "vocab" in e.server_said.lower():
                raise NotGptOssError(f"{self.url}'s model is not gpt-oss: it refuses o200k_harmony's token ids "
                                     f"({e.server_said or e.status})") from None
            raise

    def _request(self, prompt: list[int], max_tokens: int, temperature: float, top_p: float, seed: int | None,
                 logprobs: int) -> tuple[str, dict[str, Any]]:
        if self.engine == "vllm":
            body: dict[str, Any] = {
                "model": self.served_model, "prompt": prompt, "max_tokens": max_tokens, "temperature": temperature,
                "top_p": top_p, "stream": True, "return_token_ids": True, "return_tokens_as_token_ids": True,
                "skip_special_tokens": False, "detokenize": False, "stop_token_ids": list(STOPS),
                "ignore_eos": False,
            }
            if logprobs:
                body["logprobs"] = logprobs
            if seed is not None:
                body["seed"] = seed
            return "/v1/completions", body
        body = {"prompt": prompt, "n_predict": max_tokens, "temperature": temperature, "top_p": top_p, "stream": True,
                "return_tokens": True, "cache_prompt": True, "n_probs": logprobs, "top_k": 0, "min_p": 0.0,
                "repeat_penalty": 1.0}  # the model's own distribution: no top-k, min-p or repetition penalty
        if seed is not None:
            body["seed"] = seed
        return "/completion", body

    def _raw(self, prompt: list[int], *, max_tokens: int, temperature: float, top_p: float, seed: int | None,
             logprobs: int, cancel: Cancel = None) -> Generator[TokenStep, None, None]:
        """The steps of one request; closing the generator closes the connection."""
        import httpx

        path, body = self._request(prompt, max_tokens, temperature, top_p, seed, logprobs)
        try:
            with self._http.stream("POST", self.url + path, json=body, headers=self._headers()) as r:
                if r.status_code != 200:
                    raise self._refused(r.status_code, r.read().decode("utf-8", "replace"), f"POST {path}")
                for line in r.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    chunk = json.loads(data)
                    if "error" in chunk:  # vLLM answers 200, then refuses in the stream
                        said = _words(json.dumps(chunk))
                        err = chunk["error"] if isinstance(chunk["error"], dict) else {}
                        code = err.get("code") if isinstance(err.get("code"), int) else None
                        raise ServerError(f"{self.url} failed mid-stream: {said}", url=self.url, status=code,
                                          server_said=said)
                    yield from self._parse(chunk, logprobs)
                    if cancelled(cancel):
                        return  # leaving the block closes the connection: the server aborts the request
        except httpx.HTTPError as e:
            raise self._fail(e, f"POST {path}") from None

    def _parse(self, chunk: dict[str, Any], logprobs: int) -> list[TokenStep]:
        """One chunk's steps (several on vLLM); why a stream ended is told by its last token, in stream()."""
        if self.engine == "vllm":
            choice = (chunk.get("choices") or [{}])[0]
            ids = [int(t) for t in choice.get("token_ids") or []]
            lp = choice.get("logprobs") or {}
            chosen = lp.get("token_logprobs") or []
            tops = lp.get("top_logprobs") or []
            steps = []
            for j, token in enumerate(ids):
                alts: tuple[tuple[int, float], ...] = ()
                if logprobs and j < len(tops) and tops[j]:
                    pairs = [(int(str(k).split(":")[-1]), float(v)) for k, v in tops[j].items()]
                    alts = tuple(sorted(pairs, key=lambda p: -p[1])[:logprobs])
                value = float(chosen[j]) if logprobs and j < len(chosen) and chosen[j] is not None else None
                steps.append(TokenStep(token, value, alts))
            return steps
        ids = [int(t) for t in chunk.get("tokens") or []]
        probs = chunk.get("completion_probabilities") or []
        steps = []
        for j, token in enumerate(ids):
            value, alts = None, ()
            if logprobs and j < len(probs):
                p = probs[j]
                value = float(p["logprob"]) if p.get("logprob") is not None else None
                alts = tuple((int(a["id"]), float(a["logprob"])) for a in (p.get("top_logprobs") or [])[:logprobs])
            steps.append(TokenStep(token, value, alts))
        return steps

    # -- the backend contract -----------------------------------------------------------------------

    def stream(self, prompt_ids: Sequence[int], *, max_tokens: int = 2048, temperature: float = 1.0,
               top_p: float = 1.0, seed: int | None = None, logprobs: int = 0, routing: bool = False,
               sinks: bool = False, cancel: Cancel = None) -> Iterator[TokenStep]:
        """Generated steps after ``prompt_ids``, to ``<|return|>``/``<|call|>`` (the last step), ``max_tokens``
        or ``cancel``. A server that ends a stream on ``<|end|>`` (llama.cpp counts it among gpt-oss's
        end-of-generation tokens) is asked to go on from there: its prompt cache makes that a short prefill."""
        prompt, left, rounds = list(prompt_ids), max_tokens, 0
        while left > 0 and not cancelled(cancel):
            last = None
            gen = self._raw(prompt, max_tokens=left, temperature=temperature, top_p=top_p,
                            seed=None if seed is None else seed + rounds, logprobs=logprobs, cancel=cancel)
            try:
                for step in gen:
                    yield step
                    last, left = step.token, left - 1
                    prompt.append(step.token)
                    if step.token in STOPS or left <= 0 or cancelled(cancel):
                        return
            finally:
                gen.close()
            if last != END:  # the server stopped for its own reason (length, a limit): so do we
                return
            rounds += 1

    def reset(self) -> None:
        """Nothing to forget here: the server's prefix cache is its own, and serves any prompt."""

    def close(self) -> None:
        self._http.close()
