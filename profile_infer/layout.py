"""A published profile folder: its files, ``meta.json`` and reading it back."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import polars as pl
from pydantic import BaseModel, Field

from userip.sidecar import Sidecar

if TYPE_CHECKING:
    import torch

STAGE = "infer"  # the stage name in the output marker (userip.atomic)
THETA = "theta.safetensors"
CODEBOOKS = "codebooks.safetensors"
SURROGATE = "surrogate.safetensors"
SURROGATE_ITEMS = "surrogate_items.parquet"
CODES = "codes.parquet"
CURVES = "curves.csv"
EXPLANATION = "explanation.json"
CURVE_FIELDS = ("epoch", "phase", "train_llm", "train_vec", "train_rec", "grad_llm", "grad_vec",
                "grad_rec", "gamma", "valid_llm", "reseeded", "history_coverage")


class ProfileEntry(BaseModel):
    """One latent profile: its soft tokens and codebook size."""

    name: str
    K: int = Field(ge=2)
    n_tokens: int = Field(ge=1)
    context: str


class ProfileMeta(Sidecar):
    """``meta.json`` of a published profile."""

    FILE: ClassVar[str] = "meta.json"

    model: str
    model_path: str
    device: str
    data_dir: str
    dtype: str
    profiles: list[ProfileEntry]
    config_fingerprint: str
    n_users: int
    n_items: int
    hidden_size: int
    mode: Literal["full", "incremental"]
    refreshed_users: int
    epochs_run: int
    early_stopped: bool
    published_epoch: int
    best_valid_llm: float | None = None
    reseeded_codes: dict[str, int]
    theta_init: str
    history_coverage: float | None = None
    surrogate_warmup: dict[str, Any] | None = None
    evidence: dict[str, Any] | None = None
    # LM input positions this run processed, summed over processes: "train" with a backward
    # pass (shared start, EM steps), "eval" forward only (validation, evidence); offline cost
    lm_tokens: dict[str, int] | None = None
    skipped: dict[str, int]
    pad_token_fallback: bool
    world_size: int

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.profiles]


@dataclass(frozen=True)
class Profile:
    """A published profile read back: θ with its user ids, codebooks, surrogate, codes."""

    meta: ProfileMeta
    theta: torch.Tensor
    user_ids: list[str]
    codebooks: list[torch.Tensor]
    surrogate: dict[str, torch.Tensor]
    item_ids: list[str]
    codes: pl.DataFrame
    curves: list[dict[str, Any]]

    @classmethod
    def read(cls, folder: Path) -> Profile:
        from safetensors import safe_open
        from safetensors.torch import load_file

        folder = Path(folder)
        meta = ProfileMeta.read(folder)
        with safe_open(str(folder / THETA), framework="pt") as fh:
            user_ids = json.loads(fh.metadata()["user_ids"])
            theta = fh.get_tensor("theta")
        codebooks = load_file(str(folder / CODEBOOKS))
        with open(folder / CURVES, newline="") as fh:
            curves = [{k: (v if k == "phase" else float(v or "nan")) for k, v in row.items()}
                      for row in csv.DictReader(fh)]
        return cls(meta=meta, theta=theta, user_ids=user_ids,
                   codebooks=[codebooks[f"codebook.{name}"] for name in meta.names],
                   surrogate=load_file(str(folder / SURROGATE)),
                   item_ids=pl.read_parquet(folder / SURROGATE_ITEMS)["item_id"].to_list(),
                   codes=pl.read_parquet(folder / CODES), curves=curves)
