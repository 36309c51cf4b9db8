"""One config model for the whole pipeline, loaded from YAML under ``configs/``.

Each stage reads only its own section, so a change to, say, ``downstream`` leaves the
cache keys of ``prepare`` and ``infer`` untouched (see ``tasks/``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

Source = Literal[
    "amazon2014", "amazon2018", "amazon2023", "yelp", "movielens-100k", "movielens-1m"
]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def fingerprint(self) -> str:
        """Stable hash of this section's values, for cache keys."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class PrepareConfig(Section):
    source: Source = "movielens-100k"
    reviews: Path | None = None
    meta: Path | None = None
    users: Path | None = None
    business: Path | None = None
    min_core: int = Field(5, ge=1)
    label_threshold: float = 4.0
    split: Literal["random", "temporal"] = "random"
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 42
    max_reject_ratio: float = Field(0.01, ge=0.0, le=1.0)
    behaviour_max_chars: int = Field(600, ge=32)
    max_users: int | None = Field(None, ge=1, description="keep only the first N users (by id) after k-core; for quick runs")

    @field_validator("split_ratios")
    @classmethod
    def _ratios_sum_to_one(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if abs(sum(v) - 1.0) > 1e-6 or min(v) <= 0:
            raise ValueError(f"split_ratios must be positive and sum to 1, got {v}")
        return v


class ProfileSpec(Section):
    name: str
    context: str
    n_tokens: int = Field(1, ge=1)
    codebook_size: int = Field(..., ge=2)


class ProfileConfig(Section):
    model: str = "smollm2-135m"
    profiles: tuple[ProfileSpec, ...] = (
        ProfileSpec(name="hobby", context="This user's hobby is", codebook_size=4),
        ProfileSpec(name="background", context="and the user's background is", codebook_size=3),
    )
    task: str = ". Items in this user's history, oldest first:"
    max_target_tokens: int = Field(64, ge=4)
    batch_size: int = Field(16, ge=1)
    lr: float = 1e-3
    weight_decay: float = 0.0
    alpha: float = 1e-3
    beta: float = 1e-3
    gamma: float = 1e-3
    warmup_epochs: int = Field(1, ge=0)
    max_epochs: int = Field(3, ge=1)
    patience: int = Field(1, ge=0)
    checkpoint_every: int = Field(50, ge=1)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    nproc: int = Field(1, ge=1, description="processes for torchrun data parallelism")
    explain_users: int = Field(5, ge=0)
    explain_min_support: int = Field(
        5, ge=1, description="explanation: fewest train interactions behind a reported lift")
    dead_code_share: float = Field(
        0.01, ge=0.0, lt=1.0,
        description="at each joint epoch end, a code used by fewer users than this share "
                    "(and always one used by none) is re-seeded by splitting the most used code")
    valid_max_users: int | None = Field(
        None, ge=1, description="validation LM loss on a fixed seeded subset of this many users")


class QuantizeConfig(Section):
    methods: tuple[Literal["userip", "kmeans", "agglomerative", "none"], ...] = (
        "userip", "kmeans", "agglomerative", "none"
    )
    none_dim: int = Field(8, ge=1, description="dense width of the un-quantized ablation")
    seed: int = 0
    agglomerative_max_users: int = Field(
        20000, ge=2, description="fit agglomerative clustering on a seeded sample this large")
    sweep: dict[str, tuple[int, ...]] = Field(
        default_factory=dict,
        description="codebook-size sweep (k-means on the final θ), e.g. {hobby: [4, 8, 16]}")


class BankConfig(Section):
    path: Path = Path("bank")
    keep_versions: int = Field(5, ge=1)


class DownstreamConfig(Section):
    models: tuple[str, ...] = ("dcn",)
    seeds: tuple[int, ...] = (0, 1, 2)
    ablation_seeds: tuple[int, ...] = Field(
        (), description="seeds of the ablation models on `without`, the Table 4 variants, the stat "
                        "codes and the new-users protocol (the with/without comparisons); empty: `seeds`")
    epochs: int = Field(50, ge=1, description="cap; the epoch is picked by early stopping on validation AUC")
    patience: int = Field(3, ge=1, description="stop after this many epochs without a better validation AUC")
    batch_size: int = Field(1024, ge=1)
    lr: float = 1e-3
    embedding_dim: int = Field(8, ge=1)
    mlp: tuple[int, ...] = (16, 16)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    cross_layers: int = Field(3, ge=1)
    use_observed_features: bool = False
    primary_codes: str = Field("userip", description="codes variant trained with every model (Tables 2, 3)")
    transfer_models: tuple[str, ...] = Field(("pnn", "onn", "dcnv2"), description="Table 3: primary codes on these")
    ablation_models: tuple[str, ...] = Field(("dcn",), description="Table 4 / Figs 6-7: other code variants on these")
    new_user_share: float = Field(
        0.2, description="new-users protocol: this seeded share of users is held out of CTR training "
                         "(their train and valid rows dropped) and scored on its test rows; 0: off")
    new_user_seed: int = Field(0, description="seed of the held-out user draw")
    stat_codes: bool = Field(
        False, description="also fit label-derived stat codes (like-rate quartile + top category) from "
                           "each user's full and first-half train history: the target-leakage check")
    threads: int = Field(1, ge=1, description="torch/LightGBM threads per training process")
    workers: int = Field(1, ge=1, description="training processes run side by side")
    task_runner: Literal["thread", "dask", "ray"] = "thread"

    @field_validator("new_user_share")
    @classmethod
    def _share_leaves_training_users(cls, v: float) -> float:
        if not 0.0 <= v < 1.0:
            raise ValueError(f"new_user_share must be in [0, 1), got {v}: 1 leaves no user to train "
                             "the CTR model on; 0 turns the new-users protocol off")
        return v


class Config(Section):
    name: str = "demo"
    workdir: Path = Path("runs/demo")
    prepare: PrepareConfig = PrepareConfig()
    profile: ProfileConfig = ProfileConfig()
    quantize: QuantizeConfig = QuantizeConfig()
    bank: BankConfig = BankConfig()
    downstream: DownstreamConfig = DownstreamConfig()

    def stage_dir(self, stage: str) -> Path:
        """Where a stage publishes its outputs inside the run's work dir."""
        return self.workdir / stage

    def bank_dir(self) -> Path:
        """The feature bank; a relative ``bank.path`` lives inside the work dir."""
        return self.bank.path if self.bank.path.is_absolute() else self.workdir / self.bank.path


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Read a YAML config; ``overrides`` are dotted keys, e.g. ``{"profile.max_epochs": 1}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: top level must be a mapping")
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return Config.model_validate(raw)
