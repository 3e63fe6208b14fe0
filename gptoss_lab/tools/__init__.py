"""Tools the model calls: python (a sandboxed sibling kernel), function tools, and the browser."""

from .base import Tool, Toolbox
from .functions import FunctionTool, tool
from .python_tool import PythonTool
from .sandbox import RunResult, Sandbox, SandboxError, SandboxUnavailableError

__all__ = [
    "FunctionTool",
    "PythonTool",
    "RunResult",
    "Sandbox",
    "SandboxError",
    "SandboxUnavailableError",
    "Tool",
    "Toolbox",
    "tool",
]
