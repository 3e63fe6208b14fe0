"""The ``python`` tool: gpt-oss's stateful Jupyter tool, run in a :class:`~gptoss_lab.tools.sandbox.Sandbox`.

Its declaration tells the model the truth about this sandbox: stateful, the real timeout, the data
directory, no internet, and the folders the user shared.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import ToolReply, reply
from .sandbox import DATA_DIR, DEFAULT_DISK_MB, DEFAULT_FILES, DEFAULT_TIMEOUT, SHARE_DIR, Sandbox

# What the default sandbox's declaration says of its work dir (as root, or with user namespaces).
DEFAULT_DISK_LIMIT = f"up to {DEFAULT_DISK_MB} MB and {DEFAULT_FILES} files"

if TYPE_CHECKING:
    from openai_harmony import ToolNamespaceConfig

    from ..harmony.events import ParsedMessage


def declaration_text(timeout: float = DEFAULT_TIMEOUT, shares: dict[Any, str] | None = None,
                     disk_limit: str | None = None) -> str:
    """What the system message says about the python tool: this sandbox's real timeout, data drive
    (and its limit) and shares."""
    drive = f"The drive at '{DATA_DIR}' can be used to save and persist user files"
    drive += f" ({disk_limit})." if disk_limit else "."
    text = (
        "Use this tool to execute Python code in your chain of thought. The code will not be shown to the user. "
        "This tool should be used for internal reasoning, but not for code that is intended to be visible to the "
        "user (e.g. when creating plots, tables, or files).\n\n"
        "When you send a message containing Python code to python, it will be executed in a stateful Jupyter "
        f"notebook environment. python will respond with the output of the execution or time out after "
        f"{float(timeout)} seconds. {drive} "
        "Internet access for this session is disabled."
    )
    if shares:
        listed = ", ".join(
            f"'{SHARE_DIR}/{p.name}' ({'read-write' if m == 'rw' else 'read-only'})" for p, m in shares.items()
        )
        text += f" The user shared these folders: {listed}."
    return text


def python_namespace(timeout: float = DEFAULT_TIMEOUT, shares: dict[Any, str] | None = None,
                     disk_limit: str | None = None) -> ToolNamespaceConfig:
    """The ``python`` namespace as the system message declares it."""
    from openai_harmony import ToolNamespaceConfig

    return ToolNamespaceConfig(name="python", description=declaration_text(timeout, shares, disk_limit), tools=[])


class PythonTool:
    """Runs the model's ``to=python`` messages in a sandboxed sibling kernel (started ahead, warm).

    Parameters
    ----------
    sandbox
        A :class:`Sandbox` to use; by default one is made with ``sandbox_options``.
    **sandbox_options
        ``timeout``, ``memory_mb``, ``share``, ``isolation``, ... (see :class:`Sandbox`).
    """

    namespace = "python"

    def __init__(self, sandbox: Sandbox | None = None, **sandbox_options: Any):
        self.sandbox = sandbox if sandbox is not None else Sandbox(**sandbox_options)

    def matches(self, recipient: str) -> bool:
        return recipient == "python"

    def declaration_text(self) -> str:
        return declaration_text(self.sandbox.timeout, self.sandbox.shares, self.sandbox.disk_limit)

    def system_config(self) -> ToolNamespaceConfig:
        return python_namespace(self.sandbox.timeout, self.sandbox.shares, self.sandbox.disk_limit)

    def call(self, message: ParsedMessage) -> ToolReply:
        result = self.sandbox.run(message.content)
        text = result.text if result.text.strip() else "[no output]"
        return ToolReply((reply(message, text, name="python"),), tuple(result.outputs))

    def interrupt(self) -> None:
        """Stop the code running now (the turn was stopped); a kernel that does not yield is restarted."""
        self.sandbox.interrupt()

    def close(self) -> None:
        self.sandbox.close()
