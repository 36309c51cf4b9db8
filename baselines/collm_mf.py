"""CoLLM's collaborative model: matrix factorization on its ML-1M temporal split.

Score = sigmoid(u . i) with user and item embeddings learned by BCE under Adam. Every point
of the (size, lr, weight decay) grid is trained with early stopping on validation AUC; the
best point by validation AUC is scored on test once. Users and items absent from train map
to a zero vector (score 0.5). The chosen model's embeddings are saved: they are the frozen
collaborative vectors CoLLM's second stage maps into the prompt.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from safetensors.torch import load_file, save_file
from sklearn.metrics import roc_auc_score

from userip.baselines.collm_data import build_split
from userip.baselines.config import MfConfig
from userip.baselines.runs import Once
from userip.downstream.metrics import ctr_metrics

log = logging.getLogger(__name__)


class MF(torch.nn.Module):
    """Index 0 is the unknown user / item: a fixed zero vector."""

    def __init__(self, n_users: int, n_items: int, dim: int) -> None:
        super().__init__()
        self.user = torch.nn.Embedding(n_users + 1, dim, padding_idx=0)
        self.item = torch.nn.Embedding(n_items + 1, dim, padding_idx=0)
        for emb in (self.user, self.item):
            torch.nn.init.normal_(emb.weight, std=0.1)
            with torch.no_grad():
                emb.weight[0].zero_()

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return (self.user(users) * self.item(items)).sum(-1)


@dataclass(frozen=True)
class Encoded:
    users: torch.Tensor
    items: torch.Tensor
    labels: torch.Tensor
    user_ids: np.ndarray


@dataclass(frozen=True)
class MfResult:
    dim: int
    lr: float
    weight_decay: float
    best_epoch: int
    valid_auc: float
    grid: list[dict[str, float]]  # every grid point: dim, lr, weight_decay, best_epoch, valid_auc
    test: dict[str, float]        # auc, logloss, uauc, n
    test_warm: dict[str, float]
    test_cold: dict[str, float]
    seconds: float
    out_dir: str


def warm_rows(train: pl.DataFrame, frame: pl.DataFrame, min_count: int) -> np.ndarray:
    """Per row of ``frame``: its user and its item each occur ``min_count`` times in train."""
    user_n = train.group_by("user_id").len("user_n")
    item_n = train.group_by("item").len("item_n")
    return (frame.join(user_n, on="user_id", how="left")
            .join(item_n, on="item", how="left")
            .select((pl.col("user_n").fill_null(0) >= min_count)
                    & (pl.col("item_n").fill_null(0) >= min_count))
            .to_series().to_numpy())


def warm_cold_metrics(user_ids: np.ndarray, labels: np.ndarray, scores: np.ndarray,
                      warm: np.ndarray) -> dict[str, dict[str, float]]:
    """AUC, logloss, UAUC and n on all rows and on the warm and cold subsets."""
    return {name: ctr_metrics(user_ids[mask], labels[mask], scores[mask])
            for name, mask in (("all", np.ones(len(labels), dtype=bool)), ("warm", warm),
                               ("cold", ~warm))}


@dataclass(frozen=True)
class MfVectors:
    """A saved MF model: row 0 of each table is the unknown id's zero vector."""
    user: torch.Tensor                # [n_users + 1, dim]
    item: torch.Tensor                # [n_items + 1, dim]
    user_index: dict[str, int]
    item_index: dict[str, int]

    def rows(self, user_ids: Sequence[str], items: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The MF user and item vectors of each (user, item key) pair (zero when unknown)."""
        u = torch.tensor([self.user_index.get(x, 0) for x in user_ids])
        i = torch.tensor([self.item_index.get(x, 0) for x in items])
        return self.user[u], self.item[i]


def load_vectors(out_dir: Path) -> MfVectors:
    """The embeddings ``run`` published in ``out_dir``."""
    tables = load_file(Path(out_dir) / "mf.safetensors")
    ids = json.loads((Path(out_dir) / "ids.json").read_text())
    return MfVectors(tables["user"], tables["item"],
                   {x: i + 1 for i, x in enumerate(ids["users"])},
                   {x: i + 1 for i, x in enumerate(ids["items"])})


def _encode(frame: pl.DataFrame, users: dict[str, int], items: dict[str, int]) -> Encoded:
    return Encoded(
        torch.tensor([users.get(u, 0) for u in frame["user_id"]]),
        torch.tensor([items.get(t, 0) for t in frame["item"]]),
        torch.tensor(frame["label"].to_numpy(), dtype=torch.float32),
        frame["user_id"].to_numpy())


@torch.no_grad()
def _scores(model: MF, data: Encoded) -> np.ndarray:
    model.eval()
    return torch.sigmoid(model(data.users, data.items)).numpy()


def _fit(train: Encoded, valid: Encoded, n_users: int, n_items: int, dim: int, lr: float,
         wd: float, cfg: MfConfig) -> tuple[MF, int, float]:
    """Train one grid point; returns the model at its best validation epoch."""
    torch.manual_seed(cfg.seed)
    model = MF(n_users, n_items, dim)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
    gen = torch.Generator().manual_seed(cfg.seed)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    best = (-1.0, 0, {k: v.clone() for k, v in model.state_dict().items()})
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        for idx in torch.randperm(len(train.labels), generator=gen).split(cfg.batch_size):
            loss = loss_fn(model(train.users[idx], train.items[idx]), train.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        auc = float(roc_auc_score(valid.labels.numpy(), _scores(model, valid)))
        if auc > best[0]:
            best = (auc, epoch, {k: v.clone() for k, v in model.state_dict().items()})
        elif epoch - best[1] >= cfg.patience:
            break
    model.load_state_dict(best[2])
    return model, best[1], best[0]


STAGE = "baselines-collm-mf"


Parts = dict[str, pl.DataFrame]
"""train / valid / test rows, each with user_id, item (the item key) and label."""


def ml1m_parts() -> Parts:
    """CoLLM's ML-1M temporal split (``collm_data.build_split``) by part."""
    data = build_split()
    return {p: data.filter(pl.col("split") == p) for p in ("train", "valid", "test")}


def run(cfg: MfConfig, out_dir: Path) -> MfResult:
    """Grid-search MF on validation, score test (all, warm, cold); publishes ``out_dir`` with
    ``mf.safetensors``, ``ids.json`` (row i + 1 of each table is the i-th id) and
    ``metrics.json`` (an earlier finished run of the same config is returned as is)."""
    return job(cfg, out_dir).run()


def job(cfg: MfConfig, out_dir: Path, parts: Callable[[], Parts] = ml1m_parts,
        data: dict[str, str] | None = None) -> Once[MfResult]:
    """MF as a run published once: on CoLLM's ML-1M split, or on ``parts`` whose identity
    (fingerprints) ``data`` gives."""
    config = cfg.model_dump(mode="json") | ({} if data is None else {"data": data})
    return Once(out_dir, STAGE, config, MfResult, lambda folder: _grid(cfg, parts(), folder, out_dir))


def _id_order(x: str) -> tuple[int, str]:
    """Numeric order for digit ids (ML-1M's), a fixed order for any others."""
    return len(x), x


def _grid(cfg: MfConfig, parts: Parts, folder: Path, out_dir: Path) -> MfResult:
    t0 = time.perf_counter()
    user_list = sorted(parts["train"]["user_id"].unique().to_list(), key=_id_order)
    item_list = sorted(parts["train"]["item"].unique().to_list())
    users = {u: i + 1 for i, u in enumerate(user_list)}
    items = {t: i + 1 for i, t in enumerate(item_list)}
    enc = {p: _encode(f, users, items) for p, f in parts.items()}

    grid, best = [], None
    for dim, lr, wd in itertools.product(cfg.dims, cfg.lrs, cfg.weight_decays):
        model, epoch, auc = _fit(enc["train"], enc["valid"], len(users), len(items), dim, lr, wd, cfg)
        grid.append({"dim": dim, "lr": lr, "weight_decay": wd, "best_epoch": epoch, "valid_auc": auc})
        log.info("mf dim=%d lr=%g wd=%g: epoch %d valid AUC %.4f", dim, lr, wd, epoch, auc)
        if best is None or auc > best[0]["valid_auc"]:
            best = (grid[-1], model)
    assert best is not None  # the grid is never empty (MfConfig: min_length=1)
    chosen, model = best

    test = enc["test"]
    scores = _scores(model, test)
    metrics = warm_cold_metrics(test.user_ids, test.labels.numpy().astype(np.int8), scores,
                                warm_rows(parts["train"], parts["test"], cfg.warm_min_count))
    save_file({"user": model.user.weight.detach().contiguous(),
               "item": model.item.weight.detach().contiguous()}, folder / "mf.safetensors")
    (folder / "ids.json").write_text(json.dumps({"users": user_list, "items": item_list}))
    return MfResult(dim=int(chosen["dim"]), lr=chosen["lr"], weight_decay=chosen["weight_decay"],
                      best_epoch=int(chosen["best_epoch"]), valid_auc=chosen["valid_auc"], grid=grid,
                      test=metrics["all"], test_warm=metrics["warm"],
                      test_cold=metrics["cold"], seconds=round(time.perf_counter() - t0, 2),
                      out_dir=str(out_dir))
