"""Building and rendering Harmony conversations, on top of openai-harmony.

The messages are openai-harmony's own ``Message`` objects; these helpers only give them the defaults
gpt-oss expects and name the options in Harmony's words. Rendering keeps Harmony's rule on
chain of thought for every turn: the analysis of finished turns is dropped (a turn is finished by
its final message), and kept through the current turn's tool calls.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    from openai_harmony import HarmonyEncoding, Message, ReasoningEffort, ToolDescription, ToolNamespaceConfig

REASONING_EFFORTS = ("low", "medium", "high")
DEFAULT_IDENTITY = "You are ChatGPT, a large language model trained by OpenAI."
DEFAULT_KNOWLEDGE_CUTOFF = "2024-06"

BuiltinTool = Union[str, "ToolNamespaceConfig"]


def reasoning_effort(value: str | ReasoningEffort) -> ReasoningEffort:
    """``"low"``, ``"medium"`` or ``"high"`` (any case) as openai-harmony's ``ReasoningEffort``."""
    from openai_harmony import ReasoningEffort

    if isinstance(value, ReasoningEffort):
        return value
    text = str(value).strip().lower()
    if text not in REASONING_EFFORTS:
        raise ValueError(f"reasoning effort must be low, medium or high, not {value!r}")
    return ReasoningEffort(text.capitalize())


def _builtin(tool: BuiltinTool) -> ToolNamespaceConfig:
    from openai_harmony import ToolNamespaceConfig

    if isinstance(tool, ToolNamespaceConfig):
        return tool
    if tool == "python":
        return ToolNamespaceConfig.python()
    if tool == "browser":
        return ToolNamespaceConfig.browser()
    raise ValueError(f"unknown built-in tool {tool!r}: use 'python', 'browser' or a ToolNamespaceConfig")


def system_message(
    *,
    reasoning: str | ReasoningEffort = "medium",
    knowledge_cutoff: str | None = DEFAULT_KNOWLEDGE_CUTOFF,
    current_date: str | _dt.date | None = "today",
    builtin_tools: Iterable[BuiltinTool] = (),
    model_identity: str | None = DEFAULT_IDENTITY,
    required_channels: Sequence[str] | None = None,
) -> Message:
    """The system message: identity, knowledge cutoff, current date, reasoning effort, built-in tools.

    Parameters
    ----------
    reasoning
        ``"low"``, ``"medium"`` or ``"high"``: how long gpt-oss thinks in its analysis channel.
    current_date
        ``"today"`` (the default), an ISO date string, a ``datetime.date``, or ``None`` to leave it out.
    builtin_tools
        ``"python"``, ``"browser"`` or ``ToolNamespaceConfig`` objects, declared in the system message
        (function tools go in the developer message instead).
    required_channels
        The valid channels; default analysis, commentary, final.
    """
    from openai_harmony import Message, Role, SystemContent

    content = SystemContent.new().with_reasoning_effort(reasoning_effort(reasoning))
    content.model_identity = model_identity
    content.knowledge_cutoff = knowledge_cutoff
    if current_date == "today":
        current_date = _dt.date.today()
    if isinstance(current_date, _dt.date):
        current_date = current_date.isoformat()
    if current_date is not None:
        content = content.with_conversation_start_date(current_date)
    if required_channels is not None:
        content = content.with_required_channels(list(required_channels))
    for tool in builtin_tools:
        content = content.with_tools(_builtin(tool))
    return Message.from_role_and_content(Role.SYSTEM, content)


def developer_message(
    instructions: str | None = None, functions: Sequence[ToolDescription] = ()
) -> Message:
    """The developer message: the instructions and the function tools (``functions.NAME``)."""
    from openai_harmony import DeveloperContent, Message, Role

    content = DeveloperContent.new()
    if instructions is not None:
        content = content.with_instructions(instructions)
    if functions:
        content = content.with_function_tools(list(functions))
    return Message.from_role_and_content(Role.DEVELOPER, content)


def user_message(text: str) -> Message:
    from openai_harmony import Message, Role

    return Message.from_role_and_content(Role.USER, text)


def assistant_message(
    text: str, *, channel: str | None = "final", recipient: str | None = None, content_type: str | None = None
) -> Message:
    """An assistant message; with a ``recipient`` it is a tool call (rendered ending in ``<|call|>``)."""
    from openai_harmony import Message, Role

    msg = Message.from_role_and_content(Role.ASSISTANT, text)
    if channel is not None:
        msg = msg.with_channel(channel)
    if recipient is not None:
        msg = msg.with_recipient(recipient)
    if content_type is not None:
        msg = msg.with_content_type(content_type)
    return msg


def tool_message(name: str, text: str, *, channel: str | None = None, recipient: str | None = None) -> Message:
    """A tool's reply, authored by the tool (``python``, ``functions.get_weather``, ``browser.search``).

    gpt-oss expects the reply on the channel of the call, addressed ``to=assistant``.
    """
    from openai_harmony import Author, Message, Role

    msg = Message.from_author_and_content(Author.new(Role.TOOL, name), text)
    if channel is not None:
        msg = msg.with_channel(channel)
    if recipient is not None:
        msg = msg.with_recipient(recipient)
    return msg


def _config():  # type: ignore[no-untyped-def]
    from openai_harmony import RenderConversationConfig

    # openai-harmony drops analysis only before the conversation's FIRST final message (openai/harmony
    # PR #96), so a third turn would be sent the second turn's chain of thought: we drop it ourselves.
    return RenderConversationConfig(auto_drop_analysis=False)


def drop_finished_analysis(messages: Sequence[Message], *, keep_from: int | None = None) -> list[Message]:
    """The messages without the analysis of finished turns, as gpt-oss was trained.

    A turn is finished once the assistant has written its final answer: every analysis-channel
    message before the conversation's last final (the assistant's thinking, and python calls and
    their replies, which run on the analysis channel) is left out, for every turn, not only the
    first. Commentary (function calls and their results) and finals stay; so does the analysis of a
    turn that was stopped before its final, until a later turn has one (it tells the model what
    happened, e.g. that its python state was lost). ``keep_from``: the index where the turn being run
    began: nothing from there on is dropped, so a turn keeps its thinking through its own tool calls
    (even past a final it wrote before calling a tool again).
    """
    msgs = list(messages)
    finals = [i for i, m in enumerate(msgs) if m.author.role.value == "assistant" and m.channel == "final"]
    if not finals:
        return msgs
    last = finals[-1]
    keep = len(msgs) if keep_from is None else keep_from
    return [m for i, m in enumerate(msgs) if not (i < last and i < keep and m.channel == "analysis")]


def render_for_completion(
    messages: Iterable[Message],
    next_role: str = "assistant",
    *,
    drop_analysis: bool = True,
    keep_from: int | None = None,
    encoding: HarmonyEncoding | None = None,
) -> list[int]:
    """The prompt token ids that ask the model for the next message (ends in ``<|start|>assistant``).

    With ``drop_analysis`` (the default, as gpt-oss was trained), the analysis of every finished
    turn is left out (:func:`drop_finished_analysis`); ``keep_from``: where the turn being run began.
    """
    from openai_harmony import Conversation, Role

    enc = encoding if encoding is not None else _encoding()
    msgs = drop_finished_analysis(list(messages), keep_from=keep_from) if drop_analysis else list(messages)
    return enc.render_conversation_for_completion(Conversation.from_messages(msgs), Role(next_role), _config())


def render_conversation(
    messages: Iterable[Message], *, drop_analysis: bool = True, encoding: HarmonyEncoding | None = None
) -> list[int]:
    """The token ids of a whole conversation; with ``drop_analysis`` only its last turn keeps its analysis
    (:func:`drop_finished_analysis`)."""
    from openai_harmony import Conversation

    enc = encoding if encoding is not None else _encoding()
    msgs = list(messages)
    if drop_analysis:
        users = [i for i, m in enumerate(msgs) if m.author.role.value == "user"]
        msgs = drop_finished_analysis(msgs, keep_from=users[-1] if users else 0)
    return enc.render_conversation(Conversation.from_messages(msgs), _config())


def _encoding() -> HarmonyEncoding:
    from .vocab import encoding

    return encoding()
