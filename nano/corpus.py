"""The gpt-oss-nano corpus: Harmony conversations rendered by openai-harmony, with a loss mask.

Every sequence is one conversation under one system prompt (reasoning effort, date, tools) and
several user turns, so most tokens are the assistant's. The tasks (one template each):

- arithmetic through the python tool: "What is A*B?", "What is A+B?", "What is A-B?", "Compute A times B."
- ``get_weather(city)`` declared as a function tool: called with ``<|constrain|>json``, the temperature quoted
- the capital of one of 50 countries, without tools
- copy drills ("Repeat after me: ..."), which teach copying numbers, the skill the tool tasks need

Messages are rendered one by one with ``enc.render`` (``render_conversation_for_training`` drops the
analysis before a final answer, tool calls included). A sequence either trains every turn with its
analysis, or (``history`` style) renders the earlier turns as :class:`gptoss_lab.Chat` sends them at
inference (finished analysis dropped) and trains the last turn only. Arithmetic operands come from a
seeded generator; pairs with :func:`held_out` true are never trained on and are what evaluation uses.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal

from gptoss_lab.harmony import conversation as conv
from gptoss_lab.harmony.events import RETURN, START
from gptoss_lab.tools.functions import tool
from gptoss_lab.tools.python_tool import DEFAULT_DISK_LIMIT, python_namespace

EFFORTS = ("low", "medium", "high")

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Japan": "Tokyo", "China": "Beijing", "India": "New Delhi", "Russia": "Moscow", "Canada": "Ottawa",
    "Australia": "Canberra", "Brazil": "Brasília", "Argentina": "Buenos Aires", "Mexico": "Mexico City",
    "Egypt": "Cairo", "Kenya": "Nairobi", "Nigeria": "Abuja", "South Africa": "Pretoria", "Turkey": "Ankara",
    "Greece": "Athens", "Sweden": "Stockholm", "Norway": "Oslo", "Finland": "Helsinki", "Denmark": "Copenhagen",
    "Poland": "Warsaw", "Austria": "Vienna", "Switzerland": "Bern", "Belgium": "Brussels",
    "Netherlands": "Amsterdam", "Ireland": "Dublin", "United Kingdom": "London", "United States": "Washington, D.C.",
    "South Korea": "Seoul", "Thailand": "Bangkok", "Vietnam": "Hanoi", "Indonesia": "Jakarta",
    "Philippines": "Manila", "Iran": "Tehran", "Iraq": "Baghdad", "Saudi Arabia": "Riyadh", "Israel": "Jerusalem",
    "Peru": "Lima", "Chile": "Santiago", "Colombia": "Bogotá", "Cuba": "Havana", "Hungary": "Budapest",
    "Czech Republic": "Prague", "Ukraine": "Kyiv", "Morocco": "Rabat", "New Zealand": "Wellington",
}

CITIES = [
    "Paris", "London", "Tokyo", "Lisbon", "Berlin", "Madrid", "Rome", "Cairo", "Sydney", "Toronto", "Chicago",
    "Boston", "Seattle", "Mumbai", "Delhi", "Beijing", "Seoul", "Moscow", "Dubai", "Oslo", "Vienna", "Prague",
    "Dublin", "Athens", "Lima", "Nairobi", "Bangkok", "Singapore", "Istanbul", "Amsterdam", "Stockholm",
    "Helsinki", "Warsaw", "Budapest", "Zurich", "Denver", "Miami", "Austin", "Mexico City", "New York",
    "San Francisco", "Rio de Janeiro", "Buenos Aires", "Cape Town", "Hong Kong", "Los Angeles", "Barcelona",
]

OPS = {"*": "product", "+": "sum", "-": "difference", "times": "product"}


def held_out(a: int, b: int) -> bool:
    """Operand pairs kept for evaluation (about 1 in 16): never in a training sequence."""
    return (a * 1_000_003 + b * 7919) % 16 == 5


def operand(rng: random.Random) -> int:
    digits = rng.randint(1, 4)
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def operands(rng: random.Random, *, train: bool = True) -> tuple[int, int]:
    while True:
        a, b = operand(rng), operand(rng)
        if held_out(a, b) != train:
            return a, b


def arithmetic_prompt(op: str, a: int, b: int) -> tuple[str, str, int]:
    """The user's text, the Python expression and its value."""
    sym = "*" if op == "times" else op
    expr = f"{a}{sym}{b}"
    value = a * b if sym == "*" else a + b if sym == "+" else a - b
    text = f"Compute {a} times {b}." if op == "times" else f"What is {expr}?"
    return text, expr, value


# -- the tools, declared exactly as gptoss_lab declares them at inference --------------------------------


@cache
def weather_tool(with_unit: bool = False) -> Any:
    """``get_weather`` as a notebook declares it (the quickstart's variant has a ``unit``)."""
    if with_unit:

        def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> dict:  # noqa: ARG001
            """Get the current weather in a city.

            Parameters
            ----------
            city : str
                The city's name, e.g. "Lisbon".
            """
            return {}
    else:

        def get_weather(city: str) -> dict:  # noqa: ARG001
            """Get the current weather in a city."""
            return {}

    return tool(get_weather)


def weather_reply(city: str, temperature: int, with_unit: bool) -> str:
    import json

    doc: dict[str, Any] = {"city": city, "temperature": temperature}
    if with_unit:
        doc["unit"] = "celsius"
    return json.dumps(doc, ensure_ascii=False)


def header(effort: str, date: str, python: bool, weather: int) -> list[Any]:
    """System (and developer) messages as :meth:`gptoss_lab.Chat.header_messages` builds them."""
    system = conv.system_message(
        reasoning=effort, current_date=date,
        builtin_tools=[python_namespace(disk_limit=DEFAULT_DISK_LIMIT)] if python else [],
    )
    out = [system]
    if weather:
        out.append(conv.developer_message(None, [weather_tool(weather == 2).description]))
    return out


# -- turns ---------------------------------------------------------------------------------------------


@dataclass
class Turn:
    kind: str
    user: str
    messages: list[Any] = field(default_factory=list)  # the assistant's and the tools' messages, in order


def _a(text: str, channel: str = "analysis", **kw: Any) -> Any:
    return conv.assistant_message(text, channel=channel, **kw)


def arithmetic_turn(rng: random.Random, effort: str, *, train: bool = True) -> Turn:
    op = rng.choice(list(OPS))
    a, b = operands(rng, train=train)
    text, expr, value = arithmetic_prompt(op, a, b)
    what = OPS[op]
    if effort == "low":
        think = f"Compute {expr} with python."
    elif effort == "medium":
        think = f"The user asks for {expr}, the {what} of {a} and {b}. Use python to be exact."
    else:
        think = (
            f"The user asks for {expr}. That is the {what} of {a} and {b}. Doing {expr} by hand is error-prone, "
            f"so check it. Use the python tool: run print({expr}) and read the output."
        )
    msgs = [
        _a(think),
        _a(f"print({expr})", recipient="python"),
        conv.tool_message("python", f"{value}\n", channel="analysis", recipient="assistant"),
    ]
    if effort == "medium":
        msgs.append(_a(f"Python printed {value}."))
    elif effort == "high":
        msgs.append(_a(f"The tool printed {value}. So {expr} = {value}. Answer with {value}."))
    msgs.append(_a(f"{expr} = {value}", channel="final"))
    return Turn("arithmetic", text, msgs)


def weather_turn(rng: random.Random, effort: str, with_unit: bool) -> Turn:
    city = rng.choice(CITIES)
    t = rng.randint(-15, 40)
    if effort == "low":
        think = f"Call get_weather for {city}."
    elif effort == "medium":
        think = f"The user wants the weather in {city}. Use get_weather with city {city}."
    else:
        think = (
            f"The user wants the current weather in {city}. I cannot know it myself. The get_weather function "
            f"gives it. Call it with city {city}, then quote the temperature."
        )
    msgs = [
        _a(think),
        _a(f'{{"city":"{city}"}}', channel="commentary", recipient="functions.get_weather",
           content_type="<|constrain|>json"),
        conv.tool_message("functions.get_weather", weather_reply(city, t, with_unit), channel="commentary",
                          recipient="assistant"),
    ]
    if effort == "high":
        msgs.append(_a(f"The tool says {t} degrees in {city}. Quote {t}."))
    elif effort == "medium":
        msgs.append(_a(f"It is {t} degrees."))
    msgs.append(_a(f"It is currently {t} °C in {city}.", channel="final"))
    return Turn("weather", f"What's the weather in {city}?", msgs)


def capital_turn(rng: random.Random, effort: str) -> Turn:
    country = rng.choice(list(CAPITALS))
    capital = CAPITALS[country]
    if effort == "low":
        think = f"Capital of {country} is {capital}."
    elif effort == "medium":
        think = f"The user asks for the capital of {country}. It is {capital}. No tool needed."
    else:
        think = (
            f"The user asks for the capital of {country}. This is a fact I know, so no tool is needed. "
            f"The capital of {country} is {capital}. Answer in one sentence."
        )
    return Turn("capital", f"What is the capital of {country}?",
                [_a(think), _a(f"The capital of {country} is {capital}.", channel="final")])


def drill_turn(rng: random.Random, effort: str) -> Turn:
    items = " ".join(str(operand(rng)) for _ in range(rng.randint(2, 5)))
    if effort == "low":
        think = "Repeat them."
    elif effort == "medium":
        think = f"The user wants {items} repeated. Copy exactly."
    else:
        think = f"The user wants the numbers repeated: {items}. Copy them exactly, in order: {items}. Nothing else."
    return Turn("drill", f"Repeat after me: {items}", [_a(think), _a(items, channel="final")])


# -- sequences -----------------------------------------------------------------------------------------


def random_date(rng: random.Random) -> str:
    return (dt.date(2025, 1, 1) + dt.timedelta(days=rng.randrange(4 * 365))).isoformat()


def render_turn(enc: Any, turn: Turn, *, with_start: bool) -> tuple[list[int], list[int]]:
    """Token ids and loss mask of one turn's assistant and tool messages (after the user message).

    ``with_start``: the prompt does not end in ``<|start|>assistant`` yet (the trained full style never
    does); the first ``<|start|>assistant`` then is not the model's to predict either way.
    """
    ids: list[int] = []
    mask: list[int] = []
    prev_assistant = False
    for k, m in enumerate(turn.messages):
        toks = list(enc.render(m))
        is_assistant = m.author.role.value == "assistant"
        if is_assistant and m.channel == "final":
            toks[-1] = RETURN
        if k == 0 and not with_start:
            toks = toks[2:]  # the prompt already ends in <|start|>assistant
        if is_assistant:
            head = 0 if (prev_assistant) else (2 if (k > 0 or with_start) else 0)
            mask += [0] * head + [1] * (len(toks) - head)
        else:
            mask += [0] * len(toks)
        ids += toks
        prev_assistant = is_assistant
    assert ids[0] == START or not with_start
    return ids, mask


def make_turn(rng: random.Random, effort: str, python: bool, weather: int) -> Turn:
    kinds = ["capital", "drill"] + ["arithmetic"] * (3 if python else 0) + ["weather"] * (2 if weather else 0)
    kind = rng.choice(kinds)
    if kind == "arithmetic":
        return arithmetic_turn(rng, effort)
    if kind == "weather":
        return weather_turn(rng, effort, weather == 2)
    if kind == "capital":
        return capital_turn(rng, effort)
    return drill_turn(rng, effort)


def sequence(enc: Any, rng: random.Random, max_len: int = 900) -> tuple[list[int], list[int]]:
    """One training sequence: token ids and the loss mask (1 where the model is trained to predict)."""
    effort = rng.choice(EFFORTS)
    python = rng.random() < 0.8
    weather = rng.choice([0, 1, 1, 2]) if rng.random() < 0.6 or not python else 0
    msgs = header(effort, random_date(rng), python, weather)
    ids = list(conv.render_conversation(msgs, encoding=enc))
    mask = [0] * len(ids)
    if rng.random() < 0.3:  # history style: earlier turns as Chat renders them, the last turn trained
        history: list[Any] = []
        for _ in range(rng.randint(0, 4)):
            t = make_turn(rng, effort, python, weather)
            history += [conv.user_message(t.user)] + [m for m in t.messages]
        last = make_turn(rng, effort, python, weather)
        prompt = conv.render_for_completion(msgs + history + [conv.user_message(last.user)], encoding=enc)
        t_ids, t_mask = render_turn(enc, last, with_start=False)
        ids, mask = list(prompt), [0] * len(prompt)
        ids, mask = ids + t_ids, mask + t_mask
        return ids[:max_len], mask[:max_len]
    while True:
        t = make_turn(rng, effort, python, weather)
        u = list(enc.render(conv.user_message(t.user)))
        t_ids, t_mask = render_turn(enc, t, with_start=True)
        if len(ids) + len(u) + len(t_ids) > max_len:
            break
        ids += u + t_ids
        mask += [0] * len(u) + t_mask
    return ids, mask
