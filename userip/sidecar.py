"""Base of the typed sidecar files (``stats.json``, ``meta.json``) that stages write
beside their outputs and later stages read. Each producing stage declares its own model
in its ``layout`` module; consumers import that module, never the file name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from userip.errors import InputError

M = TypeVar("M", bound="Sidecar")


class Sidecar(BaseModel):
    """A JSON file named ``FILE`` inside a stage's output folder."""

    model_config = ConfigDict(extra="forbid")
    FILE: ClassVar[str]
    INDENT: ClassVar[int] = 1

    @classmethod
    def path(cls, folder: Path) -> Path:
        return Path(folder) / cls.FILE

    @classmethod
    def read(cls: type[M], folder: Path) -> M:
        """The sidecar of ``folder``; InputError naming the file (and field) when it is
        missing or not valid."""
        path = cls.path(folder)
        try:
            return cls.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            raise InputError(f"{cls.FILE} not found", path=str(path)) from None
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or None
            raise InputError(f"not a valid {cls.FILE}: {first['msg']}", path=str(path),
                             field=field) from None

    def write(self, folder: Path) -> Path:
        path = self.path(folder)
        body = self.model_dump(mode="json", exclude_none=True)
        path.write_text(json.dumps(body, indent=self.INDENT, ensure_ascii=False) + "\n")
        return path
