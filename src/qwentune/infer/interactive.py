"""Interactive chat in the terminal: streamed answers, history, and slash commands."""

from __future__ import annotations

import threading

from qwentune.console import console, notice

HELP = """commands:
  /clear         forget the conversation
  /system TEXT   set the system prompt (and clear the conversation)
  /help          this help
  /exit          leave (Ctrl-D works too; Ctrl-C stops the current answer)"""


def trim_history(engine, history: list[dict], reserve: int) -> int:
    """Drop the oldest exchanges until the prompt fits the context; returns how many messages were dropped."""
    dropped = 0
    while len(history) > 1 and len(engine.prompt_ids(history)) + reserve > engine.context_length:
        # Drop one user turn and the reply that followed it.
        del history[:2]
        dropped += 2
    return dropped


def chat_loop(engine, **settings) -> int:
    history: list[dict] = []
    console.print(f"[bold]qwentune chat[/bold] — {engine.info['model_path']}  (/help for commands)")
    while True:
        try:
            line = console.input("[bold cyan]You:[/bold cyan] ")
        except EOFError:
            console.print()
            return 0
        except KeyboardInterrupt:
            console.print()
            continue
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            command, _, argument = text.partition(" ")
            if command in ("/exit", "/quit"):
                return 0
            if command == "/clear":
                history.clear()
                console.print("[dim]conversation cleared[/dim]")
            elif command == "/system":
                engine.system_prompt = argument.strip() or None
                history.clear()
                console.print(f"[dim]system prompt {'set' if engine.system_prompt else 'removed'}; conversation cleared[/dim]")
            elif command == "/help":
                console.print(HELP, markup=False)
            else:
                console.print(f"unknown command {command}; /help lists them", markup=False)
            continue
        history.append({"role": "user", "content": text})
        dropped = trim_history(engine, history, settings.get("max_new_tokens", 512))
        if dropped:
            notice(f"the conversation outgrew the context; dropped the oldest {dropped} messages")
        stop = threading.Event()
        pieces: list[str] = []
        console.print("[bold green]Assistant:[/bold green] ", end="")
        try:
            for piece in engine.stream(history, stop_event=stop, **settings):
                pieces.append(piece)
                console.out(piece, end="", highlight=False)
        except KeyboardInterrupt:
            stop.set()
            console.print("\n[dim](answer stopped)[/dim]", end="")
        console.print()
        history.append({"role": "assistant", "content": "".join(pieces)})
