"""Function tools from Python callables: ``@gptoss_lab.tool``.

The declaration is the JSON schema gpt-oss was trained to read (openai-harmony renders it as a
TypeScript-like type): the docstring's summary is the tool's description, each parameter's type
comes from its annotation and its description from the docstring; parameters without defaults are
``required``; defaults are kept; ``Literal`` and ``Enum`` become string enums; no ``title`` keys.
``.call(arguments_json)`` validates the model's arguments and never raises on them: a bad call comes
back as a text starting with ``Error:`` that the model can act on.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import inspect
import json
import re
import threading
import types
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Union, get_args, get_origin

from .base import as_text, reply

if TYPE_CHECKING:
    from openai_harmony import ToolDescription

    from ..harmony.events import ParsedMessage

_SIMPLE = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _strip_titles(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _strip_titles(v) for k, v in schema.items() if k != "title"}
    if isinstance(schema, list):
        return [_strip_titles(v) for v in schema]
    return schema


def schema_of(annotation: Any) -> dict[str, Any]:
    """The JSON schema of a type annotation, in the plain form Harmony renders well."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return {}
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation in _SIMPLE:
        return {"type": _SIMPLE[annotation]}
    if origin is Literal:
        kinds = {type(a) for a in args}
        kind = _SIMPLE.get(kinds.pop(), "string") if len(kinds) == 1 else "string"
        return {"type": kind, "enum": list(args)}
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        values = [m.value for m in annotation]
        kind = "string" if all(isinstance(v, str) for v in values) else _SIMPLE.get(type(values[0]), "string")
        return {"type": kind, "enum": values}
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        inner = schema_of(rest[0]) if len(rest) == 1 else {"oneOf": [schema_of(a) for a in rest]}
        if len(rest) < len(args):
            inner = {**inner, "nullable": True}
        return inner
    if annotation in (list, tuple, set) or origin in (list, tuple, set, frozenset, typing.Sequence):
        item = schema_of(args[0]) if args else {}
        return {"type": "array", "items": item} if item else {"type": "array"}
    if annotation is dict or origin is dict:
        out: dict[str, Any] = {"type": "object"}
        if len(args) == 2 and args[1] is not Any:
            out["additionalProperties"] = schema_of(args[1])
        return out
    if typing.is_typeddict(annotation):
        hints = typing.get_type_hints(annotation)
        required = sorted(getattr(annotation, "__required_keys__", hints))
        props = {k: schema_of(v) for k, v in hints.items()}
        return {"type": "object", "properties": props, "required": [k for k in hints if k in required]}
    if hasattr(annotation, "model_json_schema"):  # a pydantic model
        return _strip_titles(annotation.model_json_schema())
    return {}


def _is_rule(line: str) -> bool:
    return bool(line.strip()) and set(line.strip()) == {"-"}


def _docstring_parts(doc: str | None) -> tuple[str, dict[str, str]]:
    """The summary paragraph and the parameters' descriptions, from a numpy- or Google-style docstring."""
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    summary_lines = []
    for line in lines:
        if not line.strip():
            break
        summary_lines.append(line.strip())
    params: dict[str, str] = {}
    i = 0
    while i < len(lines):
        head = lines[i].strip()
        numpy = head in ("Parameters", "Other Parameters") and i + 1 < len(lines) and _is_rule(lines[i + 1])
        google = head in ("Args:", "Arguments:", "Parameters:", "Keyword Args:")
        if not (numpy or google):
            i += 1
            continue
        i += 2 if numpy else 1
        base = current = None
        while i < len(lines):
            line = lines[i]
            if not line.strip():
                i += 1
                continue
            indent = len(line) - len(line.lstrip())
            base = indent if base is None else base
            if indent < base or (numpy and i + 1 < len(lines) and _is_rule(lines[i + 1])):
                break  # the next section
            if indent == base:
                m = re.match(r"^\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*(?::\s*(.*))?$", line.strip())
                if m:
                    current = m.group(1)
                    # numpy: "name : type" (the text comes below); Google: "name (type): text"
                    params[current] = "" if numpy else (m.group(2) or "").strip()
            elif current is not None:
                params[current] = (params[current] + " " + line.strip()).strip()
            i += 1
    return " ".join(summary_lines), {k: v for k, v in params.items() if v}


class FunctionTool:
    """A Python function the model can call as ``functions.NAME``; the function stays callable."""

    namespace = "functions"

    def __init__(self, fn: Callable[..., Any], *, name: str | None = None, description: str | None = None):
        self.fn = fn
        self.name = name or fn.__name__
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.name):
            raise ValueError(f"a function tool's name must be an identifier, not {self.name!r}")
        hidden = [p for p in inspect.signature(fn).parameters if p.startswith("_")]
        if hidden:
            raise ValueError(f"{self.name}: parameters starting with '_' cannot be filled by the model: {hidden}")
        self.signature = inspect.signature(fn)
        summary, param_docs = _docstring_parts(fn.__doc__)
        self.summary = description if description is not None else summary
        self.param_docs = param_docs
        self.is_async = inspect.iscoroutinefunction(fn)
        self._hints = typing.get_type_hints(fn) if hasattr(fn, "__annotations__") else {}
        self._validator: Any = None
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<function tool functions.{self.name}{self.signature}>"

    @property
    def parameters(self) -> dict[str, Any] | None:
        props: dict[str, Any] = {}
        required = []
        for pname, p in self.signature.parameters.items():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            schema = schema_of(self._hints.get(pname, p.annotation))
            if pname in self.param_docs:
                schema = {**schema, "description": self.param_docs[pname]}
            if p.default is p.empty:
                required.append(pname)
            else:
                default = p.default.value if isinstance(p.default, enum.Enum) else p.default
                schema = {**schema, "default": default}
            props[pname] = schema
        if not props:
            return None
        out: dict[str, Any] = {"type": "object", "properties": props}
        if required:
            out["required"] = required
        return out

    @property
    def description(self) -> ToolDescription:
        """The declaration as openai-harmony's ``ToolDescription``."""
        from openai_harmony import ToolDescription

        return ToolDescription.new(self.name, self.summary, parameters=self.parameters)

    def matches(self, recipient: str) -> bool:
        return recipient == f"functions.{self.name}"

    def _validate(self, arguments: dict[str, Any]) -> dict[str, Any]:
        import pydantic

        if self._validator is None:
            fields: dict[str, Any] = {}
            for pname, p in self.signature.parameters.items():
                if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                    continue
                ann = self._hints.get(pname, Any) if p.annotation is not p.empty else Any
                fields[pname] = (ann, ... if p.default is p.empty else p.default)
            self._validator = pydantic.create_model(
                f"{self.name}_arguments", __config__=pydantic.ConfigDict(extra="forbid"), **fields
            )
        model = self._validator.model_validate(arguments)
        return {k: getattr(model, k) for k in type(model).model_fields}

    def call(self, arguments: str | dict[str, Any] | ParsedMessage) -> Any:
        """Validate the model's arguments and run the function.

        Takes the arguments JSON (or a dict, or the model's call message). Returns the result as
        text, or a text starting with ``Error:`` when the arguments or the function fail.
        """
        import pydantic

        from ..harmony.events import ParsedMessage

        if isinstance(arguments, ParsedMessage):  # the Tool protocol: a call message in, tool messages out
            return [reply(arguments, self.call(arguments.content), name=f"functions.{self.name}")]
        if isinstance(arguments, str):
            text = arguments.strip() or "{}"
            try:
                arguments = json.loads(text)
            except json.JSONDecodeError as e:
                return f"Error: the arguments are not valid JSON ({e.msg} at position {e.pos}); send a JSON object."
            except (RecursionError, ValueError) as e:
                return f"Error: the arguments could not be read ({type(e).__name__}); send a flat JSON object."
        if not isinstance(arguments, dict):
            return f"Error: the arguments must be a JSON object with the parameters {list(self.signature.parameters)}."
        try:
            kwargs = self._validate(arguments)
        except pydantic.ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'arguments'}: {err['msg']}" for err in e.errors())
            return f"Error: invalid arguments for {self.name}: {problems}."
        except Exception as e:  # a type pydantic cannot check: say so rather than raise
            return f"Error: the arguments for {self.name} could not be checked ({type(e).__name__}: {e})."
        try:
            result = self.fn(**kwargs)
            if inspect.isawaitable(result):
                result = _run_coroutine(result)
        except Exception as e:
            return f"Error: {self.name} failed: {type(e).__name__}: {e}"
        return as_text(result)


def _run_coroutine(coro: Any) -> Any:
    """Await ``coro`` from synchronous code, also inside a running event loop (a Jupyter kernel's)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def runner() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as e:  # handed back to the caller's thread
            box["error"] = e

    t = threading.Thread(target=runner, name="gptoss-lab-async-tool")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None, description: str | None = None) -> Any:
    """Make a Python function a tool the model can call (``functions.NAME``).

    Examples
    --------
    >>> @gptoss_lab.tool
    ... def get_weather(city: str, unit: Literal["C", "F"] = "C") -> dict:
    ...     '''Current weather in a city.'''
    ...     return {"city": city, "temp": 21, "unit": unit}
    >>> get_weather("Paris")            # still a function
    >>> get_weather.call('{"city": 1}')  # 'Error: invalid arguments for get_weather: city: ...'
    """
    if fn is None:
        return lambda f: FunctionTool(f, name=name, description=description)
    return FunctionTool(fn, name=name, description=description)

