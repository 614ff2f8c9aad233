"""Interactive chat in the terminal: streamed answers, history, and slash commands."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from qwentune.console import console, notice
from qwentune.infer.engine import PromptTooLongError
from qwentune.infer.reply import Delta
from qwentune.infer.settings import GenerationSettings

with contextlib.suppress(ImportError):  # line editing and ↑ history where the platform has readline
    import readline  # noqa: F401

HELP = """commands:
  /clear         forget the conversation
  /system TEXT   set the system prompt (and forget the conversation); /system alone shows it
  /think         answers start with reasoning, shown dimmed and not kept in the conversation
  /no_think      answers without reasoning (Qwen3-style models: enable_thinking);
                 either may be followed by a message, sent at once
  /help          this help
  /exit          leave (Ctrl-D works too)
Ctrl-C stops the answer being written; the conversation goes on."""


def trim_history(engine, history: list[dict], reserve: int) -> int:
    """Drop the oldest exchanges until the prompt leaves `reserve` tokens of context; returns messages dropped.

    The newest message is always kept (the engine shortens the answer if it must).
    """
    dropped = 0
    while len(history) > 1 and len(engine.prompt_ids(history)) + reserve > engine.context_length:
        del history[:2]  # one user turn and the reply that followed it
        dropped += 2
    return dropped


def _run_command(engine, history: list[dict], text: str) -> bool:
    """Carry out a slash command; False when it asks to leave."""
    command, _, argument = text.partition(" ")
    if command in ("/exit", "/quit"):
        return False
    if command == "/clear":
        history.clear()
        console.print("[dim]conversation cleared[/dim]")
    elif command == "/system" and argument.strip():
        engine.system_prompt = argument.strip()
        history.clear()
        console.print("[dim]system prompt set; conversation cleared[/dim]")
    elif command == "/system":
        console.print(f"system prompt: {engine.system_prompt or '(none)'}", markup=False)
    elif command in ("/think", "/no_think"):
        engine.enable_thinking = command == "/think"
        console.print(f"[dim]{_thinking_state(engine)}[/dim]")
    elif command == "/help":
        console.print(HELP, markup=False)
    else:
        console.print(f"unknown command {command}; /help lists them", markup=False)
    return True


def _thinking_state(engine) -> str:
    state = "on" if engine.enable_thinking else "off"
    if not engine.has_thinking_switch:
        return f"thinking {state}, but this model's chat template has no thinking switch (enable_thinking)"
    return f"thinking {state}"


def show_reply(deltas: Iterator[Delta]) -> Iterator[str]:
    """Write a streamed reply to the terminal, reasoning dimmed; yields the answer's pieces as they are shown."""
    last = None
    for delta in deltas:
        if delta.kind == "content" and last == "reasoning":
            console.out("")  # the answer starts on its own line below the reasoning
        if delta.kind == "reasoning":
            console.out(delta.text, end="", style="dim", highlight=False)
        else:
            console.out(delta.text, end="", highlight=False)
            yield delta.text
        last = delta.kind


def _answer(engine, history: list[dict], settings: GenerationSettings) -> None:
    """Stream the reply to the last user message and add its answer (not its reasoning) to the history."""
    dropped = trim_history(engine, history, settings.max_new_tokens)
    if dropped:
        notice(f"the conversation outgrew the context; dropped the oldest {dropped} messages")
    pieces: list[str] = []
    console.print("[bold green]Assistant:[/bold green] ", end="")
    try:
        # Without tools, a call the model writes is text: shown and kept as written.
        for piece in show_reply(engine.stream_reply(history, **settings.model_dump())):
            pieces.append(piece)
    except KeyboardInterrupt:  # leaving the loop stops the generation; what was written is kept
        console.print("\n[dim](answer stopped)[/dim]", end="")
    except PromptTooLongError as exc:
        # Not a failure of the session: the chat goes on without this message.
        console.print(f"\n[yellow]not sent:[/yellow] {exc}; /clear or a shorter message", end="")
        history.pop()
        console.print()
        return
    console.print()
    history.append({"role": "assistant", "content": "".join(pieces).strip()})


def chat_loop(engine, settings: GenerationSettings) -> int:
    history: list[dict] = []
    info = engine.info
    console.print(
        f"[bold]qwentune chat[/bold] — {info['model_path']} on {info['device']} ({info['dtype']}); "
        f"up to {settings.max_new_tokens} new tokens per answer"
        + (f"; {_thinking_state(engine)} (/think, /no_think)" if engine.has_thinking_switch else "")
        + ". /help for commands, Ctrl-D to leave."
    )
    while True:
        try:
            text = console.input("[bold cyan]You:[/bold cyan] ").strip()
        except EOFError:
            console.print()
            return 0
        except KeyboardInterrupt:  # Ctrl-C at the prompt discards the line, as in a shell
            console.print()
            continue
        if not text:
            continue
        command, _, message = text.partition(" ")
        if command in ("/think", "/no_think") and message.strip():  # switch, then send the rest
            _run_command(engine, history, command)
            text = message.strip()
        elif text.startswith("/"):
            if not _run_command(engine, history, text):
                return 0
            continue
        history.append({"role": "user", "content": text})
        _answer(engine, history, settings)
