"""The one error family of qwentune: raise anywhere, printed once by `qwentune.cli.main`.

A stage never prints its own error. It raises a `QwentuneError` (or a subclass) whose message
says what went wrong and whose `advice` says what to do; the single handler in `qwentune.cli`
prints `error: <message>` (and the advice) as one block on stderr and exits with `exit_code`.
A traceback is shown only with `--verbose` or `QWENTUNE_DEBUG=1`.

Exit codes (documented in the README):
    0   ok
    1   the run failed (a model that cannot load, a corrupted checkpoint, bad data)
    2   bad usage or config (a wrong flag, an unknown key, a missing file named by the user)
    130 interrupted (Ctrl-C / SIGINT)
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class QwentuneError(Exception):
    """A failure the user can act on: `str(error)` says what happened, `advice` what to do."""

    exit_code: int = EXIT_FAILED

    def __init__(self, message: str, *, advice: str | None = None):
        super().__init__(message)
        self.advice = advice

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class UsageError(QwentuneError):
    """Bad command-line usage or config: exit code 2."""

    exit_code = EXIT_USAGE


class RunFailed(QwentuneError):
    """The run could not complete (data, model, checkpoint, I/O): exit code 1."""

    exit_code = EXIT_FAILED
