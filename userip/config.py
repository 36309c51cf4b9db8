"""One config model for the whole pipeline, loaded from YAML under ``configs/``.

Each stage reads only its own section, so a change to, say, ``downstream`` leaves the
cache keys of ``prepare`` and ``infer`` untouched (see ``tasks/``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from userip.baselines.config import BaselinesConfig
from userip.errors import ConfigError
from userip.hyper import FitSettings, RunSettings
from userip.section import Section, Seed

# Every supported source rates 1..5 (stars); a label threshold outside (1, 5] makes every
# label the same.
RATING_RANGE = (1.0, 5.0)
RESERVED_COLUMNS = ("user_id",)

Source = Literal[
    "amazon2014", "amazon2018", "amazon2023", "yelp", "movielens-100k", "movielens-1m"
]


S = TypeVar("S", bound=BaseModel)


class PrepareConfig(Section):
    source: Source = "movielens-100k"
    reviews: Path | None = None
    meta: Path | None = None
    users: Path | None = None
    business: Path | None = None
    min_core: int = Field(5, ge=1)
    label_threshold: float = Field(4.0, gt=RATING_RANGE[0], le=RATING_RANGE[1],
                                   description="rating >= this is a positive; within the 1-5 range")
    split: Literal["random", "temporal"] = "random"
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: Seed = 42
    max_reject_ratio: float = Field(0.01, ge=0.0, le=1.0)
    behaviour_review_words: int = Field(
        8, ge=0, description="behaviour text: first words of each review kept after the item (0: none)")
    max_users: int | None = Field(None, ge=1, description="keep only the first N users (by id) after k-core; for quick runs")

    @field_validator("split_ratios")
    @classmethod
    def _ratios_sum_to_one(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if abs(sum(v) - 1.0) > 1e-6 or min(v) <= 0:
            raise ValueError(f"split_ratios must be positive and sum to 1, got {v}")
        return v


class ProfileSpec(Section):
    name: str = Field(..., pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$",
                      description="a column name in codes.parquet and a file name")
    context: str
    n_tokens: int = Field(1, ge=1)
    codebook_size: int = Field(..., ge=2)

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, v: str) -> str:
        if v in RESERVED_COLUMNS or v.startswith("dist_"):
            raise ValueError(f"profile name {v!r} is reserved (user_id and dist_* are "
                             "codes.parquet columns)")
        return v


class ProfileConfig(Section):
    run_fields: ClassVar[frozenset[str]] = frozenset({"checkpoint_every"})

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
    theta_init: Literal["shared", "random"] = Field(
        "shared", description="shared: every user starts at the LM's mean input embedding; "
                              "random: an independent draw per user (the ablation)")
    shared_steps: int = Field(
        0, ge=0, description="theta_init shared: batches that first tune the one shared start "
                             "on every user's text (0: the LM's mean input embedding)")
    shared_lr: float | None = Field(
        None, gt=0.0, description="Adam's lr for the shared start (None: lr); the per-user "
                                  "steps after it use lr")
    alpha: float = Field(1.0, ge=0.0, description="weight of ℓ_vec (Eq. 7)")
    beta: float = Field(0.25, ge=0.0, description="commitment weight inside ℓ_vec (Eq. 4)")
    gamma: float = Field(1.0, ge=0.0, description="weight of ℓ_rec when rec_grad_share is null")
    rec_grad_share: float | None = Field(
        0.3, ge=0.0, lt=1.0,
        description="set γ each step so that ℓ_rec carries this share of θ's gradient norm")
    codebook_decay: float = Field(0.95, gt=0.0, lt=1.0,
                                  description="EMA decay of the codebook updates, per batch")
    surrogate_lr: float = Field(3e-3, gt=0.0)
    surrogate_warmup_epochs: int = Field(
        5, ge=0, description="passes over the train interactions fitting the surrogate "
                             "before the first joint epoch")
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
    evidence_max_users: int | None = Field(
        None, ge=2, description="own- vs other-θ evidence on a fixed seeded subset of this many "
                                "users with a validation text (None: all of them)")
    evidence_draws: int = Field(
        1, ge=1, description="other-user θ per validation user in the evidence: seeded "
                             "derangements whose losses are averaged (each costs two passes)")

    @model_validator(mode="after")
    def _shared_start_needs_warmup(self) -> ProfileConfig:
        if self.theta_init == "shared" and self.warmup_epochs == 0:
            raise ValueError("theta_init 'shared' needs warmup_epochs >= 1: k-means cannot "
                             "initialise codebooks on identical θ rows")
        return self


class QuantizeConfig(Section):
    methods: tuple[Literal["userip", "kmeans", "agglomerative", "none"], ...] = (
        "userip", "kmeans", "agglomerative", "none"
    )
    none_dim: int = Field(8, ge=1, description="dense width of the un-quantized ablation")
    evidence_permutations: int = Field(
        1000, ge=100, description="permutations of the null behind the codes' NMI p-values")
    seed: Seed = 0
    agglomerative_max_users: int = Field(
        20000, ge=2, description="fit agglomerative clustering on a seeded sample this large")
    sweep: dict[str, tuple[int, ...]] = Field(
        default_factory=dict,
        description="codebook-size sweep (k-means on the final θ), e.g. {hobby: [4, 8, 16]}")


class BankConfig(Section):
    run_fields: ClassVar[frozenset[str]] = frozenset({"keep_versions", "grace_seconds"})

    path: Path = Path("bank")
    keep_versions: int = Field(5, ge=1)
    grace_seconds: float = Field(
        60.0, ge=0, description="the version LATEST named last outlives its replacement this long")


class DownstreamConfig(Section, FitSettings, RunSettings):
    """What each fit learns from (``FitSettings``) and how fits run (``RunSettings``), both
    declared in ``userip.hyper``, plus which fits run."""
    run_fields: ClassVar[frozenset[str]] = frozenset(RunSettings.model_fields)

    models: tuple[str, ...] = ("dcn",)
    seeds: tuple[int, ...] = (0, 1, 2)
    ablation_seeds: tuple[int, ...] = Field(
        (), description="seeds of the ablation models on `without`, the Table 4 variants, the stat "
                        "codes and the new-users protocol (the with/without comparisons); empty: `seeds`")
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
    baselines: BaselinesConfig | None = Field(
        None, description="the LLM baselines (userip.baselines): `userip run` runs them after the "
                          "downstream stages only when this section is there")

    @model_validator(mode="after")
    def _cross_section(self) -> Config:
        """Rules across sections and ProfileConfig fields, checked before any work starts."""
        names = [p.name for p in self.profile.profiles]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"profile.profiles: name {repeated[0]!r} is used twice")
        seeds = {"profile.seed": [self.profile.seed], "downstream.seeds": list(self.downstream.seeds)}
        for where, values in seeds.items():
            bad = [v for v in values if not 0 <= v < 2**32]
            if bad:
                raise ValueError(f"{where}: seed {bad[0]} outside [0, 2**32)")
        if self.prepare.max_users is not None:
            try:
                check_codebooks_fit(self.profile, self.prepare.max_users, "prepare.max_users")
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return self

    def stage_dir(self, stage: str) -> Path:
        """Where a stage publishes its outputs inside the run's work dir."""
        return self.workdir / stage

    def bank_dir(self) -> Path:
        """The feature bank; a relative ``bank.path`` lives inside the work dir."""
        return self.bank.path if self.bank.path.is_absolute() else self.workdir / self.bank.path


def check_codebooks_fit(profile: ProfileConfig, n_users: int | None, where: str) -> None:
    """ConfigError when a codebook has more codes than there are users (the quantizer
    cannot fill it; unchecked, that failed only after the warm-up epoch)."""
    if n_users is None:
        return
    for spec in profile.profiles:
        if spec.codebook_size > n_users:
            raise ConfigError(f"profile {spec.name!r}: codebook_size {spec.codebook_size} is more "
                              f"than the {n_users} users ({where})")


def validated(model: type[S], data: Any, source: str) -> S:
    """``model.model_validate(data)``, a validation error becoming one ConfigError line
    naming ``source`` (a file or "--flags") and the field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe(exc)}") from None


def describe(exc: ValidationError) -> str:
    """The first error of ``exc`` as ``field.path: message``, plus how many more."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Read a YAML config; ``overrides`` are dotted keys, e.g. ``{"profile.max_epochs": 1}``.
    Every problem (missing or unreadable file, bad YAML, a wrong key or value) is one
    ConfigError line naming the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{at}: invalid YAML ({getattr(exc, 'problem', None) or exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, not {type(raw).__name__}")
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {dotted}: {key!r} is not a section")
        node[leaf] = value
    return validated(Config, raw, f"{path}" + (" with --set" if overrides else ""))
