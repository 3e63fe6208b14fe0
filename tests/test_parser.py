"""The lenient Harmony parser: vectors, real-world failures, streaming."""

from __future__ import annotations

import pytest
from openai_harmony import Role

from gptoss_lab.harmony import (
    ContentDelta,
    HarmonyStreamParser,
    Malformed,
    MessageDone,
    MessageStarted,
    ToolCall,
    TurnDone,
    parse_tokens,
    transcript,
)
from gptoss_lab.harmony import conversation as conv
from gptoss_lab.harmony import events as ev


def parse(enc, text, role="assistant", reason="end_of_input"):
    return transcript(parse_tokens(enc.encode(text, allowed_special="all"), enc, role=role, reason=reason))


def fields(doc):
    return [(m["role"], m["name"], m["channel"], m["recipient"], m["content_type"], m["content"]) for m in doc["messages"]]


def test_special_token_ids_match_the_encoding(enc):
    for name, tid in [
        ("<|return|>", ev.RETURN), ("<|constrain|>", ev.CONSTRAIN), ("<|channel|>", ev.CHANNEL),
        ("<|start|>", ev.START), ("<|end|>", ev.END), ("<|message|>", ev.MESSAGE), ("<|call|>", ev.CALL),
    ]:
        assert enc.encode(name, allowed_special="all") == [tid]
    assert not enc.is_special_token(ev.FIRST_SPECIAL - 1) and enc.is_special_token(ev.FIRST_SPECIAL)


# -- openai-harmony's own vectors ---------------------------------------------------------------


def _ids(vectors, name):
    return [int(x) for x in (vectors / name).read_text().split()]


def test_vector_simple_reasoning_response(enc, vectors):
    doc = transcript(parse_tokens(_ids(vectors, "test_simple_reasoning_response.txt"), enc))
    assert fields(doc) == [
        ("assistant", None, "analysis", None, None, 'User asks: "What is 2 + 2?" Simple arithmetic. Provide answer.'),
        ("assistant", None, "final", None, None, "2 + 2 = 4."),
    ]
    assert doc["complete"] is False and doc["errors"] == []  # the last message has no stop token


def test_vector_simple_tool_call(enc, vectors):
    doc = transcript(parse_tokens(_ids(vectors, "test_simple_tool_call.txt"), enc))
    assert fields(doc) == [
        ("assistant", None, "analysis", None, None,
         'User asks: "What is the weather in Tokyo?" We need to use lookup_weather tool.'),
        ("assistant", None, "analysis", "lookup_weather", "code", '{"location": "Tokyo"}'),
    ]


def test_vector_streamable_parser_token_by_token(enc, vectors):
    tokens = enc.encode((vectors / "test_streamable_parser.txt").read_text(encoding="utf-8").rstrip(), allowed_special="all")
    parser = HarmonyStreamParser(enc)
    events = [e for t in tokens for e in parser.feed([t])] + parser.close()
    doc = transcript(events)
    assert [m[:5] for m in fields(doc)] == [
        ("assistant", None, "analysis", None, None),
        ("assistant", None, "commentary", "browser.search", "code"),
        ("tool", "browser.search", "commentary", "assistant", None),
    ]
    assert "But w\ne need up to date info" in doc["messages"][0]["content"]
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert [c.recipient for c in calls] == ["browser.search"]
    # Each token of content arrived as its own delta, in order, and they add up to the message.
    deltas = "".join(e.text for e in events if isinstance(e, ContentDelta) and e.index == 0)
    assert deltas == doc["messages"][0]["content"]
    assert sum(isinstance(e, ContentDelta) for e in events) > 40


def test_vector_tool_response(enc, vectors):
    text = (vectors / "test_tool_response_parsing.txt").read_text(encoding="utf-8").rstrip()
    doc = parse(enc, text, role=None)
    assert fields(doc) == [("tool", "browser.search", "commentary", "assistant", None, '{"result": "https://openai.com/"}')]
    assert doc["complete"] is False


# -- the same messages as openai-harmony on well-formed output -------------------------------------


def test_agrees_with_openai_harmony_on_a_rendered_tool_turn(enc):
    messages = [
        conv.system_message(current_date=None, builtin_tools=["python"]),
        conv.user_message("What is 12*34? 日本語 🎉"),
        conv.assistant_message("Compute with python.", channel="analysis"),
        conv.assistant_message("print(12*34)", channel="analysis", recipient="python", content_type="code"),
        conv.tool_message("python", "408\n", channel="analysis", recipient="assistant"),
        conv.assistant_message("Let me check the weather too.", channel="commentary"),
        conv.assistant_message('{"city": "Zürich"}', channel="commentary", recipient="functions.get_weather",
                               content_type="<|constrain|>json"),
        conv.tool_message("functions.get_weather", '{"temp": 3}', channel="commentary", recipient="assistant"),
        conv.assistant_message("12*34 = **408**; it is 3 °C in Zürich."),
    ]
    tokens = conv.render_conversation(messages, drop_analysis=False)
    parser = HarmonyStreamParser(enc, role=None)
    parser.feed(tokens)
    parser.close()
    ours = [m.to_harmony() for m in parser.messages]
    theirs = enc.parse_messages_from_completion_tokens(tokens, None)
    # System and developer contents come back as text on both sides; compare what the model wrote.
    assert [m.to_dict() for m in ours[1:]] == [m.to_dict() for m in theirs[1:]]
    assert ours[1].content[0].text == "What is 12*34? 日本語 🎉"


# -- real-world failures: each one crashed openai-harmony's StreamableParser -----------------------


def test_return_after_end_ends_the_turn(enc):
    # vLLM #37072 / #50690: "Unexpected token 200002 while expecting start token 200006".
    doc = parse(enc, "<|channel|>final<|message|>Answer<|end|><|return|>")
    assert fields(doc) == [("assistant", None, "final", None, None, "Answer")]
    assert doc["complete"] is True and doc["stop_reason"] == "return" and doc["errors"] == []


def test_text_between_messages_is_kept_as_an_error(enc):
    # openai/harmony #60: "Unexpected token 12606 while expecting start token 200006".
    doc = parse(enc, "<|channel|>analysis<|message|>think<|end|> stray words<|start|>assistant<|channel|>final<|message|>ok<|return|>")
    assert [m["content"] for m in doc["messages"]] == ["think", "ok"]
    assert doc["errors"][0]["raw"] == " stray words"
    assert "outside a message" in doc["errors"][0]["reason"]
    assert doc["complete"] is True


def test_leftover_header_words_keep_the_message(enc):
    # openai/harmony #38: "unexpected tokens remaining in message header: ['––commentary']".
    doc = parse(enc, "<|channel|>analysis<|message|>plan<|end|><|start|>assistant<|channel|>commentary to=functions.search ––commentary <|constrain|>json<|message|>{\"q\": 1}<|call|>")
    assert fields(doc)[1] == ("assistant", None, "commentary", "functions.search", "<|constrain|>json", '{"q": 1}')
    (err,) = doc["errors"]
    assert "––commentary" in err["raw"] and "––commentary" in err["reason"]
    assert err["raw"].startswith("<|start|>assistant<|channel|>commentary")


def test_stop_token_before_message_token(enc):
    # openai/harmony #80 (PR #82, non-strict mode only): the header never reached <|message|>.
    doc = parse(enc, "<|channel|>final The answer is 4.<|return|>")
    assert fields(doc) == [("assistant", None, "final", None, None, "The answer is 4.")]
    assert doc["complete"] is True


def test_text_after_return_is_kept(enc):
    text = "<|channel|>final<|message|>Done.<|return|> and some more"
    doc = parse(enc, text)
    assert fields(doc) == [("assistant", None, "final", None, None, "Done.")]
    after = enc.encode(text, allowed_special="all").index(ev.RETURN) + 1
    assert doc["errors"] == [{"raw": " and some more", "reason": "text after <|return|>", "token_index": after}]
    assert doc["complete"] is True


def test_empty_channel_is_a_recovered_header(enc):
    # vLLM #43408 / tenstorrent: "channel marker present but no channel value found in header".
    doc = parse(enc, "<|start|>assistant<|channel|><|message|>Hello<|end|>", role=None)
    assert fields(doc) == [("assistant", None, None, None, None, "Hello")]
    assert "channel" in doc["errors"][0]["reason"]


def test_double_start(enc):
    # exo #1126: "Unknown role: <|start|><|start|>assistant".
    doc = parse(enc, "<|start|><|start|>assistant<|channel|>final<|message|>Hi<|return|>", role=None)
    assert fields(doc) == [("assistant", None, "final", None, None, "Hi")]
    assert doc["errors"][0]["raw"] == "<|start|>"


def test_doubled_role_word(enc):
    # tenstorrent vLLM #386: "Unknown role: assistantassistant".
    doc = parse(enc, "<|channel|>analysis<|message|>a<|end|><|start|>assistantassistant<|channel|>final<|message|>b<|return|>")
    assert [m["content"] for m in doc["messages"]] == ["a", "b"]
    assert doc["messages"][1]["role"] == "assistant"
    assert "assistantassistant" in doc["errors"][0]["reason"]


def test_unknown_role_keeps_the_whole_message_as_an_error(enc):
    doc = parse(enc, "<|channel|>final<|message|>x<|end|><|start|>narrator<|message|>Once upon a time<|end|><|start|>assistant<|channel|>final<|message|>y<|return|>")
    assert [m["content"] for m in doc["messages"]] == ["x", "y"]
    (err,) = doc["errors"]
    assert err["raw"] == "<|start|>narrator<|message|>Once upon a time"
    assert "unknown role 'narrator'" in err["reason"]


def test_cut_mid_message_is_kept_and_marked(enc):
    doc = parse(enc, "<|channel|>analysis<|message|>We need to comp", reason="max_tokens")
    assert fields(doc) == [("assistant", None, "analysis", None, None, "We need to comp")]
    assert doc["complete"] is False and doc["stop_reason"] == "max_tokens"
    assert doc["incomplete_messages"] == [0]


def test_cut_inside_a_header(enc):
    doc = parse(enc, "<|channel|>analysis<|message|>a<|end|><|start|>assistant<|channel|>fin", reason="max_tokens")
    assert [m["content"] for m in doc["messages"]] == ["a"]
    assert doc["errors"][0]["raw"] == "<|start|>assistant<|channel|>fin"
    assert doc["complete"] is False


def test_a_trailing_start_is_kept(enc):
    doc = parse(enc, "<|channel|>final<|message|>a<|end|><|start|>", reason="max_tokens")
    assert [m["content"] for m in doc["messages"]] == ["a"]
    assert doc["errors"][0]["raw"] == "<|start|>" and doc["complete"] is False


def test_utf8_split_across_tokens(enc):
    text = "日本語の答え 🎉👍🏽 é"
    # Feed the text one byte per token, so that every multi-byte character is split across tokens.
    single = {}
    for t in range(256 * 4):
        b = enc._inner.decode_bytes([t])
        if len(b) == 1:
            single.setdefault(bytes(b)[0], t)
    byte_tokens = [single[b] for b in text.encode("utf-8")]
    head = enc.encode("<|channel|>final<|message|>", allowed_special="all")
    parser = HarmonyStreamParser(enc)
    events = [e for t in head + byte_tokens + [ev.RETURN] for e in parser.feed([t])] + parser.close()
    deltas = [e.text for e in events if isinstance(e, ContentDelta)]
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)  # never half a character
    assert transcript(events)["messages"][0]["content"] == text


def test_constrain_and_recipient_in_either_header_part(enc):
    a = parse(enc, "<|channel|>commentary to=functions.f <|constrain|>json<|message|>{}<|call|>")
    b = parse(enc, " to=functions.f<|channel|>commentary <|constrain|>json<|message|>{}<|call|>")
    c = parse(enc, "<|channel|>commentary <|constrain|>json to=functions.f<|message|>{}<|call|>")
    d = parse(enc, "<|channel|>commentary to=functions.f<|constrain|> json<|message|>{}<|call|>")
    want = [("assistant", None, "commentary", "functions.f", "<|constrain|>json", "{}")]
    for doc in (a, b, c, d):
        assert fields(doc) == want
        assert doc["stop_reason"] == "call"
    assert a["errors"] == b["errors"] == c["errors"] == d["errors"] == []


def test_constrained_type_without_recipient_is_a_content_type(enc):
    # openai-harmony 0.0.8 reads a lone "<|constrain|>json" as a recipient; newer versions, like us, do not.
    doc = parse(enc, "<|channel|>final <|constrain|>json<|message|>{}<|return|>")
    assert fields(doc) == [("assistant", None, "final", None, "<|constrain|>json", "{}")]


def test_output_with_no_channel(enc):
    assert fields(parse(enc, "<|message|>Hello there<|return|>")) == [("assistant", None, None, None, None, "Hello there")]
    plain = parse(enc, "Just plain text, no Harmony at all.")
    assert fields(plain) == [("assistant", None, None, None, None, "Just plain text, no Harmony at all.")]
    assert plain["complete"] is False


def test_special_tokens_inside_content_are_kept_as_text(enc):
    doc = parse(enc, "<|channel|>final<|message|>Use <|channel|> and <|endoftext|> literally<|return|>")
    assert doc["messages"][0]["content"] == "Use <|channel|> and <|endoftext|> literally"


def test_message_left_open_before_next_start(enc):
    doc = parse(enc, "<|channel|>analysis<|message|>thinking<|start|>assistant<|channel|>final<|message|>done<|return|>")
    assert [m["content"] for m in doc["messages"]] == ["thinking", "done"]
    assert doc["complete"] is True


def test_named_author_and_repeated_stop_tokens(enc):
    doc = parse(enc, "<|start|>assistant:helper<|channel|>final<|message|>hi<|return|><|return|><|end|>", role=None)
    assert fields(doc) == [("assistant", "helper", "final", None, None, "hi")]
    # The tokens after the stop token that ended the turn are the model's output too: kept, not dropped.
    assert doc["errors"] == [{"raw": "<|return|><|end|>", "reason": "text after <|return|>", "token_index": 9}]
    assert doc["complete"] is True and doc["stop_reason"] == "return"


def _assert_raw_is_the_input_at_token_index(enc, tokens, doc):
    for err in doc["errors"]:
        assert enc.decode(tokens[err["token_index"]:]).startswith(err["raw"]), err


@pytest.mark.parametrize("first, second", [("return", "return"), ("call", "return"), ("return", "call"), ("call", "call")])
def test_a_second_stop_token_after_a_finished_turn_is_kept(enc, first, second):
    text = f"<|channel|>final<|message|>Done.<|{first}|><|{second}|>"
    tokens = enc.encode(text, allowed_special="all")
    doc = transcript(parse_tokens(tokens, enc))
    assert fields(doc) == [("assistant", None, "final", None, None, "Done.")]
    assert doc["errors"] == [{"raw": f"<|{second}|>", "reason": f"text after <|{first}|>", "token_index": len(tokens) - 1}]
    assert doc["complete"] is True and doc["stop_reason"] == first
    _assert_raw_is_the_input_at_token_index(enc, tokens, doc)


def test_a_second_stop_token_joins_the_text_after_the_turn(enc):
    text = "<|channel|>final<|message|>Done.<|return|> more<|return|> and more"
    tokens = enc.encode(text, allowed_special="all")
    doc = transcript(parse_tokens(tokens, enc))
    assert [e["raw"] for e in doc["errors"]] == [" more<|return|> and more"]
    assert doc["errors"][0]["reason"] == "text after <|return|>"
    _assert_raw_is_the_input_at_token_index(enc, tokens, doc)


def test_a_doubled_end_between_messages_is_kept(enc):
    text = "<|channel|>analysis<|message|>think<|end|><|end|><|start|>assistant<|channel|>final<|message|>ok<|end|><|return|>"
    tokens = enc.encode(text, allowed_special="all")
    doc = transcript(parse_tokens(tokens, enc))
    assert [m["content"] for m in doc["messages"]] == ["think", "ok"]
    (err,) = doc["errors"]
    assert err["raw"] == "<|end|>" and "outside a message" in err["reason"]
    assert err["token_index"] == tokens.index(ev.END) + 1
    assert doc["complete"] is True and doc["stop_reason"] == "return"  # <|end|><|return|> still ends the turn
    _assert_raw_is_the_input_at_token_index(enc, tokens, doc)


def test_an_end_token_opening_the_completion_is_kept(enc):
    tokens = enc.encode("<|end|><|start|>assistant<|channel|>final<|message|>ok<|return|>", allowed_special="all")
    doc = transcript(parse_tokens(tokens, enc))
    assert fields(doc) == [("assistant", None, "final", None, None, "ok")]
    assert doc["errors"] == [{"raw": "<|end|>", "reason": "text outside a message (expected <|start|>)", "token_index": 0}]


def test_a_stop_token_after_stray_text_still_ends_the_turn(enc):
    tokens = enc.encode("<|channel|>final<|message|>A<|end|> oops<|return|>", allowed_special="all")
    doc = transcript(parse_tokens(tokens, enc))
    assert [e["raw"] for e in doc["errors"]] == [" oops"]
    assert doc["complete"] is True and doc["stop_reason"] == "return"


def test_error_raws_are_verbatim_slices_of_the_input(enc):
    text = (
        "<|end|>lead<|start|>narrator<|message|>Once<|end|><|start|><|start|>assistant<|channel|>final extra words"
        "<|message|>x<|end|><|end|> stray<|start|>assistant<|channel|>final<|message|>y<|return|><|call|>tail<|end|>"
    )
    tokens = enc.encode(text, allowed_special="all")
    for role in ("assistant", None):
        doc = transcript(parse_tokens(tokens, enc, role=role))
        assert len(doc["errors"]) >= 5
        _assert_raw_is_the_input_at_token_index(enc, tokens, doc)
        assert doc["errors"][-1]["raw"] == "<|call|>tail<|end|>"


# -- headers and text the model wrote without the usual markup --------------------------------------


@pytest.mark.parametrize("role", ["assistant", None])
def test_header_without_a_role_is_the_assistants(enc, role):
    # Models that leave out the assistant tag write <|start|><|channel|>...
    doc = parse(enc, "<|start|><|channel|>analysis<|message|>Thinking<|end|>"
                     "<|start|><|channel|>commentary to=functions.f <|constrain|>json<|message|>{}<|call|>", role=role)
    assert fields(doc) == [
        ("assistant", None, "analysis", None, None, "Thinking"),
        ("assistant", None, "commentary", "functions.f", "<|constrain|>json", "{}"),
    ]
    assert doc["errors"] == [] and doc["stop_reason"] == "call"
    events = parse_tokens(enc.encode("<|start|><|channel|>commentary to=python<|message|>print(1)<|call|>",
                                     allowed_special="all"), enc, role=role)
    assert [c.recipient for c in events if isinstance(c, ToolCall)] == ["python"]


def test_header_without_a_role_cut_before_its_message_token(enc):
    doc = parse(enc, "<|start|><|channel|>final The answer is 4.<|return|>", role=None)
    assert fields(doc) == [("assistant", None, "final", None, None, "The answer is 4.")]
    assert doc["errors"] == [] and doc["complete"] is True


def test_bare_text_before_a_start_is_a_channel_less_message(enc):
    doc = parse(enc, "Hello there<|start|>assistant<|channel|>final<|message|>Hi<|return|>")
    assert fields(doc) == [
        ("assistant", None, None, None, None, "Hello there"),
        ("assistant", None, "final", None, None, "Hi"),
    ]
    assert doc.get("incomplete_messages", []) == [] and doc["errors"] == [] and doc["complete"] is True


@pytest.mark.parametrize("stop", ["<|end|>", "<|return|>", "<|call|>", ""])
def test_bare_text_at_the_start_is_a_channel_less_message(enc, stop):
    doc = parse(enc, "Hello there" + stop)
    assert fields(doc) == [("assistant", None, None, None, None, "Hello there")]
    assert doc["errors"] == []
    assert doc.get("incomplete_messages", []) == ([0] if stop == "" else [])
    assert doc["complete"] is (stop in ("<|return|>", "<|call|>"))


# -- events ---------------------------------------------------------------------------------------


def test_event_sequence_for_a_tool_call(enc):
    tokens = enc.encode("<|channel|>analysis to=python code<|message|>print(1)<|call|>", allowed_special="all")
    events = parse_tokens(tokens, enc)
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["MessageStarted", "ContentDelta", "MessageDone", "ToolCall", "TurnDone"]
    started = events[0]
    assert isinstance(started, MessageStarted)
    assert (started.role, started.channel, started.recipient, started.content_type) == ("assistant", "analysis", "python", "code")
    assert isinstance(events[2], MessageDone) and events[2].message.content == "print(1)"
    assert events[-1] == TurnDone("call") and events[-1].complete


def test_turn_done_reason_comes_from_close(enc):
    parser = HarmonyStreamParser(enc)
    parser.feed(enc.encode("<|channel|>final<|message|>par", allowed_special="all"))
    events = parser.close("stopped")
    assert events[-1] == TurnDone("stopped") and not events[-1].complete
    assert parser.messages[0].incomplete
    assert parser.close() == []  # closing twice is harmless
    with pytest.raises(RuntimeError, match="closed"):
        parser.feed([1])


def test_malformed_event_carries_position(enc):
    tokens = enc.encode("<|channel|>final<|message|>a<|return|>zzz", allowed_special="all")
    (bad,) = [e for e in parse_tokens(tokens, enc) if isinstance(e, Malformed)]
    assert bad.raw == "zzz" and tokens[bad.token_index:] == enc.encode("zzz")


def test_parsed_message_round_trips_through_openai_harmony(enc):
    tokens = enc.encode("<|channel|>commentary to=functions.f <|constrain|>json<|message|>{\"a\": 1}<|call|>", allowed_special="all")
    parser = HarmonyStreamParser(enc)
    parser.feed(tokens)
    harmony_msg = parser.messages[0].to_harmony()
    assert harmony_msg.author.role is Role.ASSISTANT
    assert enc.render(harmony_msg) == enc.encode("<|start|>assistant to=functions.f<|channel|>commentary <|constrain|>json<|message|>{\"a\": 1}<|call|>", allowed_special="all")
