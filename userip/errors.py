"""Errors a user can act on. The CLI prints them as one line and exits non-zero."""

from __future__ import annotations


class UseripError(Exception):
    """Base class: a problem with input or settings, not a bug."""


class InputError(UseripError):
    """Bad input data; names the file and, where known, the line and field."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        where = ":".join(str(p) for p in (path, line) if p is not None)
        detail = f" (field {field!r})" if field else ""
        super().__init__(f"{where}: {message}{detail}" if where else f"{message}{detail}")
        self.path, self.line, self.field = path, line, field


class ConfigError(UseripError):
    """Settings that cannot work together, or a missing model/data directory."""
