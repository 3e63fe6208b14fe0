"""Function tools from Python callables, and dispatch by recipient."""

from __future__ import annotations

import asyncio
import enum
from typing import Literal, TypedDict

import pydantic
import pytest
from openai_harmony import ToolDescription

import gptoss_lab
from gptoss_lab.harmony import conversation as conv
from gptoss_lab.harmony.events import ParsedMessage
from gptoss_lab.tools.base import Toolbox
from gptoss_lab.tools.functions import FunctionTool, tool


def developer_text(functions):
    enc = gptoss_lab.encoding()
    return enc.decode_utf8(enc.render(conv.developer_message(functions=functions)))


@tool
def get_location():
    """Gets the location of the user."""
    return "Paris"


@tool
def get_current_weather(location: str, format: Literal["celsius", "fahrenheit"] = "celsius"):
    """Gets the current weather in the provided location.

    Parameters
    ----------
    location : str
        The city and state, e.g. San Francisco, CA
    """
    return {"location": location, "temperature": 21, "format": format}


@tool
def get_multiple_weathers(locations: list[str], format: Literal["celsius", "fahrenheit"] = "celsius"):
    """Gets the current weather in the provided list of locations.

    Args:
        locations: List of city and state, e.g. ["San Francisco, CA", "New York, NY"]
    """
    return [{"location": loc} for loc in locations]


def test_declared_exactly_as_the_hand_written_tool_descriptions():
    fmt = {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"}
    hand_written = [
        ToolDescription.new("get_location", "Gets the location of the user."),
        ToolDescription.new(
            "get_current_weather",
            "Gets the current weather in the provided location.",
            parameters={
                "type": "object",
                "properties": {
                    "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                    "format": fmt,
                },
                "required": ["location"],
            },
        ),
        ToolDescription.new(
            "get_multiple_weathers",
            "Gets the current weather in the provided list of locations.",
            parameters={
                "type": "object",
                "properties": {
                    "locations": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": 'List of city and state, e.g. ["San Francisco, CA", "New York, NY"]',
                    },
                    "format": fmt,
                },
                "required": ["locations"],
            },
        ),
    ]
    ours = [get_location.description, get_current_weather.description, get_multiple_weathers.description]
    assert developer_text(ours) == developer_text(hand_written)
    assert 'format?: "celsius" | "fahrenheit", // default: celsius' in developer_text(ours)


def test_the_function_stays_callable():
    assert get_current_weather("Oslo") == {"location": "Oslo", "temperature": 21, "format": "celsius"}
    assert isinstance(get_current_weather, FunctionTool) and get_current_weather.__name__ == "get_current_weather"
    assert get_current_weather.__doc__.startswith("Gets the current weather")


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Address(TypedDict):
    city: str
    zip: int


class Filters(pydantic.BaseModel):
    min_price: float = 0
    tags: list[str] = []


def test_schema_from_type_hints():
    @tool(name="search_shop")
    def search(query: str, limit: int = 10, exact: bool = False, color: Color = Color.RED,
               note: str | None = None, address: Address | None = None, filters: Filters | None = None,
               extra: dict[str, int] | None = None, ratio: float = 0.5):
        """Search the shop."""

    p = search.description.parameters
    assert search.name == "search_shop" and search.description.description == "Search the shop."
    assert p["required"] == ["query"]
    props = p["properties"]
    assert props["query"] == {"type": "string"}
    assert props["limit"] == {"type": "integer", "default": 10}
    assert props["exact"] == {"type": "boolean", "default": False}
    assert props["ratio"] == {"type": "number", "default": 0.5}
    assert props["color"] == {"type": "string", "enum": ["red", "blue"], "default": "red"}
    assert props["note"] == {"type": "string", "nullable": True, "default": None}
    assert props["address"]["properties"] == {"city": {"type": "string"}, "zip": {"type": "integer"}}
    assert props["address"]["required"] == ["city", "zip"]
    assert props["extra"]["additionalProperties"] == {"type": "integer"}
    assert "title" not in str(p)  # Harmony would render titles as comments
    assert props["filters"]["properties"]["tags"] == {"default": [], "items": {"type": "string"}, "type": "array"}


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ("{}", "location: Field required"),
        ('{"location": 12}', "location: Input should be a valid string"),
        ('{"location": "x", "format": "kelvin"}', "format: Input should be 'celsius' or 'fahrenheit'"),
        ('{"location": "x", "unit": "C"}', "unit: Extra inputs are not permitted"),
    ],
)
def test_bad_arguments_come_back_as_error_text(arguments, says):
    out = get_current_weather.call(arguments)
    assert out.startswith("Error: ") and says in out


def test_good_call_returns_text():
    assert get_current_weather.call('{"location": "Oslo", "format": "fahrenheit"}') == (
        '{"location": "Oslo", "temperature": 21, "format": "fahrenheit"}'
    )
    assert get_location.call("") == "Paris"


def test_a_failing_function_is_an_error_text():
    @tool
    def divide(a: float, b: float) -> float:
        """Divide a by b."""
        return a / b

    assert divide.call('{"a": 1, "b": 0}') == "Error: divide failed: ZeroDivisionError: float division by zero"


def test_async_functions_work_inside_and_outside_an_event_loop():
    @tool
    async def double(n: int) -> int:
        """Double a number."""
        await asyncio.sleep(0.01)
        return 2 * n

    assert double.call('{"n": 21}') == "42"

    async def inside() -> str:  # as in a Jupyter kernel, where a loop is running
        return double.call('{"n": 5}')

    assert asyncio.run(inside()) == "10"


def call_msg(recipient, content, channel="commentary"):
    return ParsedMessage("assistant", None, channel, recipient, "<|constrain|>json", content)


def test_toolbox_dispatches_by_recipient():
    box = Toolbox([get_current_weather, get_location])
    assert box.names() == ["functions.get_current_weather", "functions.get_location"]
    (msg,) = box.dispatch(call_msg("functions.get_current_weather", '{"location": "Rome"}')).messages
    assert msg.author.name == "functions.get_current_weather" and msg.recipient == "assistant"
    assert msg.channel == "commentary" and '"Rome"' in msg.content[0].text
    (err,) = box.dispatch(call_msg("functions.nope", "{}")).messages
    assert err.content[0].text.startswith("Error: there is no tool 'functions.nope'")
    assert [d.name for d in box.function_descriptions()] == ["get_current_weather", "get_location"]


def test_plain_functions_become_tools_and_duplicates_are_refused():
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    box = Toolbox([add])
    assert box.dispatch(call_msg("functions.add", '{"a": 2, "b": 3}')).messages[0].content[0].text == "5"
    with pytest.raises(ValueError, match="functions.add"):
        Toolbox([add, tool(add)])
