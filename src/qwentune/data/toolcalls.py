"""Tool calling, one representation for every layer: definitions, calls, results, and the parser
of Qwen's `<tool_call>` output.

Canonical forms (what records hold and what the chat template receives):

    definition: {"type": "function", "function": {"name", "description"?, "parameters"?}}
    call:       {"name": "get_weather", "arguments": {"city": "Paris"}}   (+ "id" when the source has one)
    result:     a message {"role": "tool", "content": "...", "tool_call_id"?: "...", "name"?: "..."}

Sources give definitions bare ({"name", "parameters"}, glaive) or wrapped (OpenAI), and
arguments as JSON text (OpenAI) or as an object; both are normalised here so that the model's
own template renders them the one way it was trained on. Qwen's templates write a call as
`<tool_call>\\n{"name": "<name>", "arguments": <arguments as JSON>}\\n</tool_call>`; `parse_tool_calls`
reads that form back from generated text (used by evaluation and the server).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any


class ToolCallError(ValueError):
    """Malformed tool data; `reason` is the rejects.jsonl key, the message says what and where."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _decoded(value: Any, what: str, reason: str) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError as exc:
            raise ToolCallError(reason, f"{what} not valid JSON ({exc.msg} at character {exc.pos})") from None
    return value


def normalise_tools(value: Any) -> list[dict]:
    """Tool definitions (a list, or JSON text of one) in OpenAI form; [] for none."""
    if value is None or value == "":
        return []
    tools = _decoded(value, "'tools' is", "bad_tools")
    if isinstance(tools, dict):
        tools = [tools]
    if not isinstance(tools, list):
        raise ToolCallError("bad_tools", f"'tools' is a {type(tools).__name__}, not a list of definitions")
    normalised, names = [], set()
    for index, tool in enumerate(tools):
        function = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise ToolCallError("bad_tools", f"tool definition {index} has no function name")
        if function["name"] in names:
            raise ToolCallError("bad_tools", f"tool '{function['name']}' is defined twice")
        if "parameters" in function and not isinstance(function["parameters"], dict):
            raise ToolCallError("bad_tools", f"tool '{function['name']}' parameters are not a JSON schema object")
        names.add(function["name"])
        normalised.append({"type": "function", "function": dict(function)})
    return normalised


def tool_names(tools: list[dict]) -> list[str]:
    return [tool["function"]["name"] for tool in tools]


def normalise_call(value: Any, where: str = "tool call") -> dict:
    """One call as {"name", "arguments": object} (+ "id"): from OpenAI's {"id", "function": {...}},
    a bare {"name", "arguments"} or JSON text of either. Arguments must be a JSON object."""
    call = _decoded(value, f"{where} is", "bad_tool_call")
    if not isinstance(call, dict):
        raise ToolCallError("bad_tool_call", f"{where} is a {type(call).__name__}, not an object")
    function = call.get("function", call)
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        raise ToolCallError("bad_tool_call", f"{where} has no function name")
    arguments = function.get("arguments", {})
    arguments = {} if arguments in (None, "") else _decoded(arguments, f"the arguments of {where} are", "bad_tool_arguments")
    if not isinstance(arguments, dict):
        raise ToolCallError(
            "bad_tool_arguments", f"{where} arguments are a {type(arguments).__name__}, not a JSON object"
        )
    normalised = {"name": function["name"], "arguments": arguments}
    if isinstance(call.get("id"), str) and call["id"]:
        normalised["id"] = call["id"]
    return normalised


def check_calls(messages: list[dict], tools: list[dict]) -> None:
    """Every call names a defined tool; raises ToolCallError("undefined_tool") otherwise."""
    defined = set(tool_names(tools))
    for index, message in enumerate(messages):
        for call in message.get("tool_calls") or ():
            if call["name"] not in defined:
                allowed = ", ".join(sorted(defined)) if defined else "none (the record defines no tools)"
                raise ToolCallError(
                    "undefined_tool", f"message {index} calls '{call['name']}'; defined tools: {allowed}"
                )


def template_calls(calls: list[dict]) -> list[dict]:
    """Calls in the shape chat templates read (OpenAI's, arguments as an object)."""
    return [{"type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}} for c in calls]


def call_text(call: dict) -> str:
    """A call as Qwen's templates write it (json.dumps with ensure_ascii=False, as their tojson)."""
    arguments = json.dumps(call["arguments"], ensure_ascii=False)
    return f'<tool_call>\n{{"name": "{call["name"]}", "arguments": {arguments}}}\n</tool_call>'


# Qwen2.5/Qwen3's tool system prompt, for templates with no tool support of their own.
QWEN_TOOLS_HEADER = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
QWEN_TOOLS_FOOTER = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}'
    "\n</tool_call>"
)


def qwen_tools_prompt(tools: list[dict]) -> str:
    return QWEN_TOOLS_HEADER + "".join("\n" + json.dumps(t, ensure_ascii=False) for t in tools) + QWEN_TOOLS_FOOTER


def qwen_style_messages(messages: list[dict], tools: list[dict]) -> list[dict]:
    """Plain {"role", "content"} messages that spell tools the way Qwen's templates do: definitions
    in the system prompt, calls as `<tool_call>` text in the assistant turn, consecutive results
    as one user turn of `<tool_response>` blocks. For templates that know nothing of tools."""
    converted: list[dict] = []
    rest = messages
    if tools:
        system = messages[0]["content"] + "\n\n" if messages and messages[0]["role"] == "system" else ""
        rest = messages[1:] if system else messages
        converted.append({"role": "system", "content": system + qwen_tools_prompt(tools)})
    for message in rest:
        if message["role"] == "assistant" and message.get("tool_calls"):
            parts = [message["content"]] if message["content"] else []
            text = "\n".join(parts + [call_text(normalise_call(call)) for call in message["tool_calls"]])
            converted.append({**_plain(message), "content": text})
        elif message["role"] == "tool":
            block = f"<tool_response>\n{message['content']}\n</tool_response>"
            if converted and converted[-1].get("_tool_results"):
                converted[-1]["content"] += "\n" + block
            else:
                converted.append({"role": "user", "content": block, "_tool_results": True})
        else:
            converted.append(_plain(message))
    return [{k: v for k, v in m.items() if k != "_tool_results"} for m in converted]


def _plain(message: dict) -> dict:
    return {k: v for k, v in message.items() if k not in ("tool_calls", "tool_call_id", "name")}


# ---------------------------------------------------------------------------- parsing model output

_TOOL_CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)


@dataclass
class ParsedToolCalls:
    """Generated text split into its prose and its calls.

    calls: well-formed calls, normalised ({"name", "arguments"}), in order.
    malformed: the raw text of each `<tool_call>` block that did not parse (JSON error,
    no name, arguments not an object, unclosed block), with the reason.
    content: the text outside all blocks, stripped; a caller that cannot use a malformed
    call can show `text` as it is.
    """

    content: str
    calls: list[dict] = field(default_factory=list)
    malformed: list[tuple[str, str]] = field(default_factory=list)


def parse_tool_calls(text: str) -> ParsedToolCalls:
    """Read Qwen-style `<tool_call>{"name": ..., "arguments": ...}</tool_call>` blocks from `text`."""
    calls, malformed, outside, position = [], [], [], 0
    for match in _TOOL_CALL.finditer(text):
        outside.append(text[position : match.start()])
        position = match.end()
        body = match.group(1).strip()
        if not match.group(0).endswith("</tool_call>"):
            malformed.append((body, "the <tool_call> block is not closed"))
            continue
        try:
            calls.append(normalise_call(body, "the tool call"))
        except ToolCallError as exc:
            malformed.append((body, exc.detail))
    outside.append(text[position:])
    return ParsedToolCalls(content="".join(outside).strip(), calls=calls, malformed=malformed)
