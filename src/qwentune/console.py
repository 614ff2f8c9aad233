"""The one rich console every stage prints through (stderr stays free for warnings)."""

from __future__ import annotations

from rich.console import Console

console = Console(highlight=False)


def notice(message: str) -> None:
    """A one-line notice the user should read (a fallback taken, a setting changed)."""
    console.print(f"[yellow]note:[/yellow] {message}")
