"""The Harmony format layer: the offline encoding, conversation building and a lenient streaming parser."""

from .events import (
    ContentDelta,
    Event,
    Malformed,
    MessageDone,
    MessageStarted,
    ParsedMessage,
    ToolCall,
    TurnDone,
)
from .parser import HarmonyStreamParser, parse_tokens
from .transcript import TranscriptBuilder, transcript
from .vocab import VocabularyError, encoding

__all__ = [
    "ContentDelta",
    "Event",
    "HarmonyStreamParser",
    "Malformed",
    "MessageDone",
    "MessageStarted",
    "ParsedMessage",
    "ToolCall",
    "TranscriptBuilder",
    "TurnDone",
    "VocabularyError",
    "encoding",
    "parse_tokens",
    "transcript",
]
