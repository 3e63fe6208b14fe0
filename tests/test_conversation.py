"""Rendering conversations, checked against openai-harmony's own test vectors (../shared/harmony-vectors)."""

from __future__ import annotations

import datetime as dt

import pytest
from openai_harmony import ReasoningEffort, Role, ToolDescription

from gptoss_lab.harmony import conversation as conv


def expected_tokens(enc, vectors, name):
    return enc.encode((vectors / name).read_text(encoding="utf-8").rstrip(), allowed_special="all")


def expected_text(vectors, name):
    return (vectors / name).read_text(encoding="utf-8").rstrip()


def test_simple_convo(enc, vectors):
    tokens = conv.render_for_completion(
        [conv.system_message(current_date=None), conv.user_message("What is 2 + 2?")]
    )
    assert tokens == expected_tokens(enc, vectors, "test_simple_convo.txt")


@pytest.mark.parametrize("effort", ["low", "medium", "high"])
@pytest.mark.parametrize("instructions", [True, False])
def test_simple_convo_with_effort(enc, vectors, effort, instructions):
    messages = [conv.system_message(reasoning=effort, current_date=None)]
    if instructions:
        messages.append(conv.developer_message("Answer the user's questions like a robot."))
    messages.append(conv.user_message("What is the capital of the largest country in the world?"))
    name = f"test_simple_convo_{effort}_effort{'' if instructions else '_no_instruction'}.txt"
    assert conv.render_for_completion(messages) == expected_tokens(enc, vectors, name)


@pytest.mark.parametrize(
    ("name", "effort", "kwargs", "question"),
    [
        ("test_reasoning_system_message.txt", "medium", {}, "What is 2 + 2?"),
        ("test_reasoning_system_message_no_instruction.txt", "high", {}, "What is the best place to eat candy in the world?"),
        (
            "test_reasoning_system_message_with_dates.txt",
            "medium",
            {"current_date": dt.date(2021, 1, 1), "knowledge_cutoff": "2021-01"},
            "What is 42 * pi?",
        ),
    ],
)
def test_reasoning_system_message(enc, vectors, name, effort, kwargs, question):
    kwargs = {"current_date": None, **kwargs}
    system = conv.system_message(reasoning=effort, required_channels=["analysis", "final"], **kwargs)
    tokens = conv.render_for_completion([system, conv.user_message(question)])
    assert tokens == expected_tokens(enc, vectors, name)


@pytest.mark.parametrize(
    ("name", "tools"),
    [
        ("test_no_tools.txt", []),
        ("test_browser_tool_only.txt", ["browser"]),
        ("test_browser_and_python_tool.txt", ["browser", "python"]),
    ],
)
def test_builtin_tool_declarations(enc, vectors, name, tools):
    tokens = conv.render_for_completion([conv.system_message(current_date="2025-06-28", builtin_tools=tools)])
    assert enc.decode_utf8(tokens) == expected_text(vectors, name)


def test_browser_and_function_tool(enc, vectors):
    weather = ToolDescription.new(
        "lookup_weather",
        "Use this tool to lookup the weather in a given location. Call it with the parameter 'location', "
        "can be any textual description of a location.",
        parameters={"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    )
    tokens = conv.render_for_completion(
        [
            conv.system_message(current_date="2025-06-28", builtin_tools=["browser"]),
            conv.developer_message(functions=[weather]),
        ]
    )
    assert enc.decode_utf8(tokens) == expected_text(vectors, "test_browser_and_function_tool.txt")


def test_render_functions_with_parameters(enc, vectors):
    fmt = {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"}
    functions = [
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
        ToolDescription.new(
            "kitchensink",
            "A function with various complex schemas.",
            parameters={
                "description": "params object",
                "type": "object",
                "properties": {
                    "string": {"type": "string", "title": "STRING", "description": "A string", "examples": ["hello", "world"]},
                    "string_nullable": {
                        "type": "string",
                        "nullable": True,
                        "description": "A nullable string",
                        "default": "the default",
                    },
                    "string_enum": {"type": "string", "enum": ["a", "b", "c"]},
                    "oneof_string_or_number": {
                        "oneOf": [
                            {"type": "string", "default": "default_string_in_oneof"},
                            {"type": "number", "description": "numbers can happen too"},
                        ],
                        "description": "a oneof",
                        "default": 20,
                    },
                },
            },
        ),
    ]
    tokens = conv.render_for_completion(
        [
            conv.system_message(reasoning="high", current_date="2025-06-28"),
            conv.developer_message("Always respond in riddles", functions),
            conv.user_message("What is the weather like in SF?"),
        ]
    )
    assert enc.decode_utf8(tokens) == expected_text(vectors, "test_render_functions_with_parameters.txt")


def test_analysis_of_a_finished_turn_is_dropped(enc, vectors):
    messages = [
        conv.user_message("What is 2 + 2?"),
        conv.assistant_message("User asks: “What is 2 + 2?” Simple arithmetic. Provide answer.", channel="analysis"),
        conv.assistant_message("2 + 2 equals 4."),
        conv.user_message("What about 9 / 2?"),
    ]
    assert enc.decode_utf8(conv.render_for_completion(messages)) == expected_text(
        vectors, "test_dropping_cot_by_default.txt"
    )


def test_analysis_is_kept_when_asked(enc, vectors):
    messages = [
        conv.user_message("What is 2 + 2?"),
        conv.assistant_message('User asks a simple question: "What is 2 + 2?" The answer: 4.', channel="analysis"),
        conv.assistant_message("2 + 2 equals 4."),
        conv.user_message("What about 9 / 2?"),
    ]
    tokens = conv.render_for_completion(messages, drop_analysis=False)
    assert enc.decode_utf8(tokens) == expected_text(vectors, "test_preserve_cot.txt")


def test_analysis_is_kept_through_the_turns_tool_calls(enc, vectors):
    messages = [
        conv.user_message("What is the weather in SF?"),
        conv.assistant_message(
            "User asks: “What is the weather in SF?” We need to use lookup_weather tool.", channel="analysis"
        ),
        conv.assistant_message(
            '{"location": "San Francisco"}',
            channel="commentary",
            recipient="functions.lookup_weather",
            content_type="<|constrain|>json",
        ),
        conv.tool_message("functions.lookup_weather", '{"temperature": 20, "description": "sunny"}'),
    ]
    tokens = conv.render_for_completion(messages)
    expected = expected_text(vectors, "test_does_not_drop_if_ongoing_analysis.txt")
    assert enc.decode_utf8(tokens) == expected
    assert enc.encode(expected, allowed_special="all") == tokens  # <|constrain|> is the special token


def test_whole_conversation_keeps_only_the_last_turns_analysis(enc, vectors):
    messages = [
        conv.user_message("What is 2 + 2?"),
        conv.assistant_message("thinking 2+2", channel="analysis"),
        conv.assistant_message("4"),
        conv.user_message("What is 3 + 5?"),
        conv.assistant_message("thinking 3+5", channel="analysis"),
        conv.assistant_message("8"),
    ]
    tokens = conv.render_conversation(messages)
    assert enc.decode_utf8(tokens) == expected_text(vectors, "test_keep_analysis_between_finals.txt")


def test_python_tool_turn_then_next_turn_drops_the_finished_turns_analysis(enc):
    # A python call goes on the analysis channel; once the turn has its final answer, the next
    # turn's prompt no longer carries that turn's chain of thought.
    turn = [
        conv.user_message("What is 12*34?"),
        conv.assistant_message("Use python.", channel="analysis"),
        conv.assistant_message("print(12*34)", channel="analysis", recipient="python", content_type="code"),
        conv.tool_message("python", "408", channel="analysis", recipient="assistant"),
    ]
    during = enc.decode_utf8(conv.render_for_completion(turn))
    assert "Use python." in during and "print(12*34)" in during and "408" in during
    after = enc.decode_utf8(
        conv.render_for_completion(turn + [conv.assistant_message("408"), conv.user_message("And 2*3?")])
    )
    assert "Use python." not in after
    assert after.endswith("<|start|>user<|message|>And 2*3?<|end|><|start|>assistant")


def test_current_date_defaults_to_today(enc):
    text = enc.decode_utf8(conv.render_for_completion([conv.system_message()]))
    assert f"Current date: {dt.date.today().isoformat()}" in text


def test_reasoning_effort_accepts_words_and_enum():
    assert conv.reasoning_effort("HIGH") is ReasoningEffort.HIGH
    assert conv.reasoning_effort(ReasoningEffort.LOW) is ReasoningEffort.LOW
    with pytest.raises(ValueError, match="low, medium or high"):
        conv.reasoning_effort("extreme")


def test_unknown_builtin_tool_is_refused():
    with pytest.raises(ValueError, match="python.*browser"):
        conv.system_message(builtin_tools=["shell"])


def test_tool_message_author_is_the_tool():
    msg = conv.tool_message("python", "4", channel="analysis", recipient="assistant")
    assert msg.author.role is Role.TOOL and msg.author.name == "python"
    assert (msg.channel, msg.recipient) == ("analysis", "assistant")


def _three_turns():
    return [
        conv.user_message("What is 2 + 2?"),
        conv.assistant_message("turn-1 thinking", channel="analysis"),
        conv.assistant_message("turn-1 answer: 4"),
        conv.user_message("What is 12*34?"),
        conv.assistant_message("turn-2 thinking: use python", channel="analysis"),
        conv.assistant_message("print(12*34)", channel="analysis", recipient="python", content_type="code"),
        conv.tool_message("python", "408", channel="analysis", recipient="assistant"),
        conv.assistant_message("turn-2 read the output", channel="analysis"),
        conv.assistant_message("turn-2 answer: 408"),
        conv.user_message("Weather in Rome?"),
        conv.assistant_message("turn-3 thinking: call the function", channel="analysis"),
        conv.assistant_message('{"city": "Rome"}', channel="commentary", recipient="functions.get_weather",
                               content_type="<|constrain|>json"),
        conv.tool_message("functions.get_weather", '{"sky": "clear"}', channel="commentary", recipient="assistant"),
        conv.assistant_message("turn-3 answer: clear"),
    ]


def test_every_finished_turns_analysis_is_dropped_not_only_the_first(enc):
    # openai-harmony alone drops analysis only before the first final (openai/harmony PR #96)
    text = enc.decode_utf8(conv.render_for_completion(_three_turns() + [conv.user_message("Thanks!")]))
    for thought in ("turn-1 thinking", "turn-2 thinking", "print(12*34)", "<|message|>408<|end|>", "turn-2 read", "turn-3 thinking"):
        assert thought not in text, thought
    for answer in ("turn-1 answer: 4", "turn-2 answer: 408", "turn-3 answer: clear"):
        assert answer in text
    # commentary is not chain of thought: the function call and its result stay
    assert '{"city": "Rome"}' in text and '{"sky": "clear"}' in text
    assert text.endswith("<|start|>user<|message|>Thanks!<|end|><|start|>assistant")


def test_the_current_turns_analysis_stays_through_its_tool_calls_after_finished_turns(enc):
    ongoing = _three_turns() + [
        conv.user_message("And 5*6?"),
        conv.assistant_message("turn-4 thinking", channel="analysis"),
        conv.assistant_message("print(5*6)", channel="analysis", recipient="python", content_type="code"),
        conv.tool_message("python", "30", channel="analysis", recipient="assistant"),
    ]
    text = enc.decode_utf8(conv.render_for_completion(ongoing))
    assert "turn-4 thinking" in text and "print(5*6)" in text and "30<|end|>" in text
    assert "turn-2 thinking" not in text and "turn-3 thinking" not in text


def test_a_whole_conversation_keeps_only_its_last_turns_analysis(enc):
    text = enc.decode_utf8(conv.render_conversation(_three_turns()))
    assert "turn-3 thinking" in text
    assert "turn-1 thinking" not in text and "turn-2 thinking" not in text and "print(12*34)" not in text


def test_a_stopped_turn_keeps_its_analysis_until_a_later_final_and_a_running_turn_keeps_its_own(enc):
    stopped = [
        conv.user_message("Long task"),
        conv.assistant_message("stopped-turn thinking", channel="analysis"),
        conv.user_message("Never mind: 2+2?"),
    ]
    # no final yet: what the stopped turn did (e.g. that python's state was lost) is still sent
    assert "stopped-turn thinking" in enc.decode_utf8(conv.render_for_completion(stopped))
    later = stopped + [conv.assistant_message("4"), conv.user_message("Thanks")]
    assert "stopped-turn thinking" not in enc.decode_utf8(conv.render_for_completion(later))
    ongoing = [
        conv.user_message("Answer, then check"),
        conv.assistant_message("first thinking", channel="analysis"),
        conv.assistant_message("a first answer"),
        conv.assistant_message("print(1)", channel="analysis", recipient="python", content_type="code"),
        conv.tool_message("python", "1", channel="analysis", recipient="assistant"),
    ]
    # the turn being run (keep_from: where it began) keeps its thinking past a final of its own
    assert "first thinking" in enc.decode_utf8(conv.render_for_completion(ongoing, keep_from=0))
    assert "first thinking" not in enc.decode_utf8(conv.render_for_completion(ongoing))
