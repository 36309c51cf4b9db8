"""What every config section is built from (ground floor, imported by ``userip.config`` and
by the section schemas it embeds, e.g. ``userip.baselines.config``)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

# Seeds go to numpy, torch and FAISS; numpy's legacy seeding and FAISS take 32 bits.
Seed = Annotated[int, Field(ge=0, lt=2**32)]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, not silently ignored.

    A section's fields are of two kinds: those that change what its stage computes, and
    ``run_fields``, how it is run (threads, workers, checkpoint cadence). A stage's cache
    key holds ``learned()`` only, so changing a run setting reuses a finished output."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    run_fields: ClassVar[frozenset[str]] = frozenset()

    def learned(self) -> dict[str, Any]:
        """The fields that change the stage's output, as JSON values."""
        return self.model_dump(mode="json", exclude=set(self.run_fields))
