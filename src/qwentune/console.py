"""The rich consoles every stage prints through: progress and results on stdout, errors on stderr."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

console = Console(highlight=False)
# soft_wrap: an error message stays one line per line, whatever the terminal width (and in logs).
error_console = Console(stderr=True, highlight=False, soft_wrap=True)


def notice(message: str) -> None:
    """A one-line notice the user should read (a fallback taken, a setting changed)."""
    # soft_wrap: a notice stays one line in logs, whatever the terminal width.
    console.print(Text.assemble(("note: ", "yellow"), message), soft_wrap=True)


def error(message: str) -> None:
    """An error the user must act on; the message is printed as is (no markup)."""
    error_console.print(Text.assemble(("error: ", "bold red"), str(message)))
