"""A quantize output folder: one sub-folder per method (``userip``, ``kmeans``, ...) and
per sweep point (``sweep/<profile>_K<k>``), each with its codes and ``meta.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field

from userip.sidecar import Sidecar

STAGE = "quantize"
CODES = "codes.parquet"
"""user_id plus one Int32 code column per profile (and dist_<profile> distances)"""
DENSE = "dense.parquet"
"""user_id plus <profile>_<j> Float32 columns: the un-quantized ablation"""
SWEEP = "sweep"


class ProfileSize(BaseModel):
    name: str
    K: int = Field(ge=1)


class SweepPoint(BaseModel):
    profile: str
    K: int
    note: str | None = None


class QuantizeMeta(Sidecar):
    """``meta.json`` of one quantizer's output."""

    FILE: ClassVar[str] = "meta.json"

    profiles: list[ProfileSize]
    source_profile: str | None = None
    """the profile folder the codes were computed from"""
    n_users: int | None = None
    method: str
    kind: Literal["codes", "dense"]
    model: str | None = None
    note: str | None = None
    evidence: dict[str, Any] | None = None
    ari_vs_userip: dict[str, Any] | None = None
    reduction: str | None = None
    dim: int | None = None
    sweep: SweepPoint | None = None
    history: str | None = None
    """stat codes: which part of each user's train history they summarise"""
    data_fingerprint: str | None = None
    """stat codes: the data set they were computed from"""
    taste_values: list[str] | None = None
    like_rate_edges: list[float] | None = None

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.profiles]

    @property
    def sizes(self) -> list[tuple[str, int]]:
        return [(p.name, p.K) for p in self.profiles]

    def data_file(self, folder: Path) -> Path:
        return Path(folder) / (DENSE if self.kind == "dense" else CODES)
