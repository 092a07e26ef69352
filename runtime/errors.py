"""The one exception family for user-facing errors.

Every mistake a user can make (a bad path, a corrupt file, an option out of range) raises a subclass of
:class:`ProxyEmbedError`. The CLI turns it into a one-line message and an exit code; library users can
catch the base class. Internal bugs stay ordinary exceptions, so they are never mistaken for user input.
"""

from __future__ import annotations


class ProxyEmbedError(Exception):
    """A user-facing error: what is wrong, where, and what to do about it.

    ``exit_code`` is 2 for bad input (the CLI contract); a failed check uses :class:`CheckFailed`.
    """

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class BadInput(ProxyEmbedError):
    """An input file, folder or option is missing, malformed or inconsistent."""


class MissingDependency(ProxyEmbedError):
    """An optional package is needed for this feature; the hint names the extra to install."""


class IntegrityError(BadInput):
    """A file does not match the checksum or signature recorded for it (altered, truncated, or another model's)."""


class CheckFailed(ProxyEmbedError):
    """An accuracy check ran and found a regression: exit code 1, not a user mistake."""

    exit_code = 1


def require(module: str, extra: str):
    """Import an optional dependency, or raise :class:`MissingDependency` naming the extra that brings it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(
            f"'{module}' is not installed",
            hint=f'pip install "proxyembed[{extra}]"',
        ) from exc
