"""Base of the typed sidecar files (``stats.json``, ``meta.json``, ``model.json``, ...) that
stages write beside their outputs and later stages read. Each producing stage declares its
models in its ``layout`` module; consumers import that module, never the file name."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from userip.errors import InputError


class Sidecar(BaseModel):
    """A JSON file named ``FILE`` inside a stage's output folder; unknown keys are errors.
    NaN (a UAUC with no user holding both labels) is written as JSON's NaN constant, as
    ``json.dumps`` does."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")
    FILE: ClassVar[str]

    @classmethod
    def path(cls, folder: Path) -> Path:
        return Path(folder) / cls.FILE

    @classmethod
    def exists(cls, folder: Path) -> bool:
        return cls.path(folder).is_file()

    @classmethod
    def read(cls, folder: Path) -> Self:
        """The sidecar of ``folder``; InputError naming the file (and field) when it is
        missing or not valid."""
        path = cls.path(folder)
        try:
            return cls.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            raise InputError(f"{cls.FILE} not found", path=str(path)) from None
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(top level)"
            raise InputError(f"not a valid {cls.FILE} ({where}: {first['msg']}); written by "
                             "another userip version? re-run the stage that wrote it",
                             path=str(path)) from None

    def write(self, folder: Path) -> Path:
        path = self.path(folder)
        path.write_text(self.model_dump_json(indent=2) + "\n")
        return path
