"""Where the downstream stages put their outputs, and the sidecar files they write there.

Run-dir layout (``userip train/evaluate/report --run DIR``)::

    <run>/downstream/<variant>/variant.json                    the variant's quantizer meta
    <run>/downstream/<variant>/<model>/seed=<s>/model.json     FitRecord: the training record
    <run>/downstream/<variant>/<model>/seed=<s>/model.pt       torch state (model.txt: LightGBM)
    <run>/downstream/<variant>/<model>/seed=<s>/metrics.json   JobMetrics: test AUC, Logloss, UAUC
    <run>/downstream/new-users/held_out.json                   HeldOut: the users held out of CTR
                                                               training, codes coverage
    <run>/downstream/new-users/<variant>/<model>/seed=<s>/     its fits (same files as above)
    <run>/stat-codes/{full,half}/                              label-derived stat codes
    <run>/report.md, <run>/metrics.json, <run>/fig*.png        written by ``userip report``

Every path above is built here and nowhere else; ``RunLayout.job_of`` reads a model dir
back into the ``Job`` it was made for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from userip.errors import InputError
from userip.hyper import FitSettings
from userip.sidecar import Sidecar

PAPER, NEW_USERS = "paper", "new-users"  # the protocols (see downstream.suite)
WITHOUT = "without"  # the variant without profile features
_SEED = "seed="


@dataclass(frozen=True)
class Job:
    """One fit: a model on one codes variant with one seed, in one protocol."""

    variant: str
    model: str
    seed: int
    protocol: str = PAPER


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")


class FitInfo(_Row):
    """What a model's ``fit`` reports: the epoch (boosting round) kept and its validation AUC."""

    best_epoch: int
    val_auc: float
    val_auc_history: list[float] = []  # per epoch; empty for LightGBM
    epochs_run: int
    epoch_cap: int


class FitRecord(FitInfo, Sidecar):
    """``model.json``: everything a fit was made from, enough to score it and to reuse it."""

    FILE: ClassVar[str] = "model.json"

    model: str
    variant: str
    seed: int
    protocol: str = PAPER
    hyper: FitSettings
    fmap: dict[str, Any]
    codes: dict[str, Any] | None  # downstream.features.codes_record of the code source
    data_fingerprint: str
    held_out: str | None  # users_fingerprint of the users left out of training
    train_seconds: float


class BucketAUC(_Row):
    auc: float | None  # None where the bucket's rows lack a label
    rows: int
    users: int


class JobMetrics(Sidecar):
    """``metrics.json`` of one fit: its test metrics (on the held-out users' rows for a
    new-users fit), with AUC by user activity."""

    FILE: ClassVar[str] = "metrics.json"

    model: str
    variant: str
    seed: int
    protocol: str
    val_auc: float
    best_epoch: int
    epochs_run: int
    epoch_cap: int
    train_seconds: float
    auc: float
    logloss: float
    uauc: float
    n: int
    by_activity: dict[str, BucketAUC]


class HeldOut(Sidecar):
    """``held_out.json``: the new-users protocol's users and each variant's coverage of them."""

    FILE: ClassVar[str] = "held_out.json"

    share: float
    seed: int
    fingerprint: str
    coverage: dict[str, float]
    skipped: list[str]
    users: list[str]


class ActivitySummary(_Row):
    """One activity bucket over seeds: AUC mean ± std where defined, its rows and users."""

    auc: float | None
    auc_std: float
    rows: int
    users: int


class VariantSummary(_Row):
    """One (model, variant) of a protocol over its seeds; the comparison fields are
    against the same model ``without`` codes, paired by seed (None for ``without``)."""

    auc: float
    auc_std: float
    logloss: float
    logloss_std: float
    uauc: float
    n_seeds: int
    seeds: list[int]
    aucs: list[float]
    best_epochs: list[int]
    epochs_run: list[int]
    epoch_cap: int
    n_rows: int
    by_activity: dict[str, ActivitySummary]
    p_value: float | None = None
    ri_auc: float | None = None
    ri_logloss: float | None = None
    auc_delta: float | None = None


Summaries = dict[str, dict[str, VariantSummary]]  # {model: {variant: summary}}


class Leakage(_Row):
    """Stat codes from the full against the first-half train history, paired by seed."""

    auc_full: float
    auc_half: float
    auc_delta: float | None
    p_value: float | None
    n_seeds: int


class EpochRange(_Row):
    """A model's best epochs over its fits; ``cap_bound``: variants with a fit at the cap."""

    cap: int
    min: int
    max: int
    median: float
    cap_bound: list[str]


class ProbeResult(_Row):
    accuracy: float
    majority: float
    classes: int
    test_users: int


class NewUsersReport(_Row):
    models: Summaries
    share: float
    seed: int
    fingerprint: str
    coverage: dict[str, float]
    skipped: list[str]
    n_users: int


class ReportMetrics(Sidecar):
    """The report's ``metrics.json`` (in the run dir, beside ``report.md``)."""

    FILE: ClassVar[str] = "metrics.json"

    models: Summaries  # paper protocol
    variants: dict[str, dict[str, Any]]  # each variant's quantizer meta
    probe: dict[str, dict[str, ProbeResult]]  # {variant: {attribute: result}}
    evidence: dict[str, Any]  # downstream.profile_evidence
    notes: list[str]
    primary_codes: str
    figures: list[str]
    leakage: dict[str, Leakage]
    epochs: dict[str, dict[str, EpochRange]]  # {protocol: {model: range}}
    new_users: NewUsersReport | None


class RunLayout:
    """The paths of one run dir."""

    VARIANT_META = "variant.json"
    TORCH_STATE = "model.pt"
    LIGHTGBM_MODEL = "model.txt"
    REPORT = "report.md"

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.root = self.run_dir / "downstream"

    def model_dir(self, job: Job) -> Path:
        base = self.root / NEW_USERS if job.protocol == NEW_USERS else self.root
        return base / job.variant / job.model / f"{_SEED}{job.seed}"

    def job_of(self, model_dir: Path) -> Job:
        """The job ``model_dir(job)`` made ``model_dir`` for."""
        parts = Path(model_dir).relative_to(self.root).parts
        protocol = NEW_USERS if len(parts) == 4 and parts[0] == NEW_USERS else PAPER
        variant, model, seed = parts[-3:]
        if len(parts) != (4 if protocol == NEW_USERS else 3) or not seed.startswith(_SEED):
            raise InputError("not a model dir of this run", path=str(model_dir))
        return Job(variant, model, int(seed[len(_SEED):]), protocol)

    def trained(self) -> list[tuple[Job, Path]]:
        """Every fit with a saved record, in path order."""
        patterns = (f"*/*/{_SEED}*/{FitRecord.FILE}", f"{NEW_USERS}/*/*/{_SEED}*/{FitRecord.FILE}")
        dirs = sorted(p.parent for pattern in patterns for p in self.root.glob(pattern))
        if not dirs:
            raise InputError("no trained models under this run dir", path=str(self.root))
        return [(self.job_of(d), d) for d in dirs]

    def variant_dir(self, variant: str) -> Path:
        return self.root / variant

    def variant_metas(self) -> dict[str, dict[str, Any]]:
        """{variant: its quantizer meta} as ``downstream.suite.train_all`` recorded them."""
        return {p.parent.name: json.loads(p.read_text())
                for p in sorted(self.root.glob(f"*/{self.VARIANT_META}"))}

    def write_variant_meta(self, variant: str, meta: dict[str, Any]) -> None:
        d = self.variant_dir(variant)
        d.mkdir(parents=True, exist_ok=True)
        (d / self.VARIANT_META).write_text(json.dumps(meta, indent=2))

    @property
    def held_out_dir(self) -> Path:
        return self.root / NEW_USERS

    def stat_codes_dir(self, history: str) -> Path:
        return self.run_dir / "stat-codes" / history

    @property
    def report(self) -> Path:
        return self.run_dir / self.REPORT

    def trained_marker(self, model: str) -> Path:
        """Written once every fit of ``model`` is saved: the flow skips a finished model."""
        return self.run_dir / f"train-{model}.done"

    @property
    def evaluated(self) -> Path:
        """Written once every fit is scored on the test split."""
        return self.run_dir / "evaluate.done"

    def figure(self, name: str) -> Path:
        return self.run_dir / name
