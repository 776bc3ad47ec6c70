"""The small exception tree. Only the CLI turns these into `appliance: error: …` lines and exit codes."""

from __future__ import annotations


class ApplianceError(Exception):
    """A known, user-facing error: the message is the whole story, no traceback needed."""


class InputError(ApplianceError):
    """An input file is unreadable or not what it claims to be (names the file and byte offset)."""

    def __init__(self, path: str, message: str, offset: int | None = None) -> None:
        where = f"{path}" if offset is None else f"{path} at byte {offset}"
        super().__init__(f"{where}: {message}")
        self.path = path
        self.offset = offset


class ConfigError(ApplianceError):
    """A configuration or command-line value is invalid."""


class RuleError(ApplianceError):
    """A rule file is invalid; the message starts with file:line:column."""
