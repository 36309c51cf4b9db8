"""KAR (Xi et al., RecSys 2024, "Towards Open-World Recommendation with Knowledge
Augmentation from Large Language Models") + DCN on the project's own prepared split and its
new-users protocol (``same_data.OurData``: the data and the users held out, those of the
downstream run when there is one); KAR has no protocol of its own here.

As built here (``baselines.kar_text`` for the texts and vectors):

- The LM writes one preference analysis per user (KAR's reasoning prompt, from the user's
  train ratings) and one knowledge paragraph per item (its factual prompt); each text is
  encoded as the mean of the same LM's last hidden states. In a CPU preset only a seeded
  subset of users and items gets a text; every other one enters with a zero vector and a
  "has text" flag of 0 (the flag is 1 for a text's vector), so the adapter sees
  ``[vector, flag]``. The vectors are standardised per dimension over the texts of their kind
  (no label is read), as mean-pooled LM states have a few dimensions far larger than the rest.
- KAR's hybrid-expert adapter (``HybridExperts``): shared experts and per-field experts,
  each an MLP, mixed per field by a softmax gate computed from the field's input vector;
  its two outputs (user preference, item knowledge) join DCN's field embeddings as two more
  dense fields, and the adapter trains with DCN end to end (``KarDCN``), through the zoo's
  torch trainer (Adam, BCE, FuxiCTR's initialisation).
- Epochs are chosen by early stopping on **validation** AUC (``ctr.patience``, cap
  ``ctr.epochs``) and test is scored once. KAR's public repository early-stops and keeps the
  model by its test-set score; we do not.
- New-users protocol: the held-out users lose their train and valid rows in CTR training;
  their texts still come from their train history (as the project's profiles do). Test
  figures on all test rows, on the new users' rows and on those of the new users that have a
  text (where the user's text can count), for DCN with the KAR fields and DCN without them,
  on the same rows and seeds, with the paired t-test p-value of each difference
  (``ctr.use_observed_features`` applies to both).

Offline cost: the LM tokens of every prompt, generated text and encoded text, and the
seconds each part took when it was computed (a cached part keeps its first cost). The result
also lists both models as ``same_data.OursResult`` does (``models``), for the same-data table.
Serving (``scorer``): the first seed's KAR + DCN, saved with the run, scores test rows from
the cached text vectors (the LM is not run per request).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np
import polars as pl
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from userip.baselines import kar_text
from userip.baselines.config import KarConfig, KarExpertsConfig
from userip.baselines.runs import Once, draw
from userip.baselines.same_data import OurData, Scoring
from userip.dataprep.layout import INTERACTIONS, ITEMS, USERS
from userip.downstream.features import FeatureMap, Split
from userip.downstream.layers import mlp
from userip.downstream.metrics import ctr_metrics, paired_p_value
from userip.downstream.models import build
from userip.downstream.models.dcn import DCN
from userip.downstream.models.torch_model import TorchModel
from userip.downstream.train import prepare
from userip.hyper import FitSettings
from userip.ids import IdIndex
from userip.profile_infer.model_loading import load_frozen_lm

log = logging.getLogger(__name__)

STAGE = "baselines-kar"
FIELDS = ("user", "item")
# every test row; the held-out (new) users' rows; those of the new users that have a text
PARTS = ("all", "new", "new_text")
METRICS = ("auc", "logloss", "uauc")
# Observed user columns that are ids, or one value per user, not attributes for a prompt.
_NOT_ATTRIBUTES = {"user_id", "user_idx", "zip_code"}


class HybridExperts(nn.Module):
    """KAR's knowledge adapter for ``len(FIELDS)`` input fields: ``shared`` expert MLPs used
    by every field plus ``specific`` ones per field, mixed per row by a softmax gate over
    that field's experts computed from its input vector."""

    def __init__(self, in_dim: int, out_dim: int, cfg: KarExpertsConfig, fields: int = len(FIELDS)) -> None:
        super().__init__()
        def expert() -> nn.Sequential:
            return mlp(in_dim, cfg.hidden, cfg.dropout, out_dim)
        self.shared = nn.ModuleList(expert() for _ in range(cfg.shared))
        self.specific = nn.ModuleList(nn.ModuleList(expert() for _ in range(cfg.specific))
                                      for _ in range(fields))
        self.gates = nn.ModuleList(nn.Linear(in_dim, cfg.shared + cfg.specific) for _ in range(fields))

    def gate(self, field: int, x: torch.Tensor) -> torch.Tensor:
        """Mixing weights (n, shared + specific) of one field's inputs x (n, in_dim)."""
        return torch.softmax(self.gates[field](x), dim=-1)

    def field(self, field: int, x: torch.Tensor) -> torch.Tensor:
        """The adapter's output (n, out_dim) for one field's inputs."""
        experts = [*self.shared, *cast(nn.ModuleList, self.specific[field])]
        outs = torch.stack([e(x) for e in experts], dim=1)  # (n, experts, out_dim)
        return (self.gate(field, x).unsqueeze(-1) * outs).sum(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, fields, in_dim) -> (B, fields, out_dim)."""
        return torch.stack([self.field(f, x[:, f]) for f in range(x.shape[1])], dim=1)


@dataclass(frozen=True)
class TextTables:
    """Adapter inputs per text row: ``[standardised vector, 1]``; the last row of each table
    is ``[0, ..., 0, 0]``, the input of every user or item without a text."""

    user: torch.Tensor   # [users with text + 1, hidden + 1]
    item: torch.Tensor   # [items with text + 1, hidden + 1]
    user_ids: list[str]
    item_ids: list[str]

    @staticmethod
    def table(vectors: torch.Tensor, hidden: int) -> torch.Tensor:
        if len(vectors):
            vectors = (vectors - vectors.mean(0)) / vectors.std(0, correction=0).clamp(min=1e-6)
        rows = torch.cat([vectors, torch.ones(len(vectors), 1)], dim=1)
        return torch.cat([rows, torch.zeros(1, hidden + 1)]).float()

    def positions(self, split: Split) -> np.ndarray:
        """(n, 2) rows of each interaction's user and item in the two tables."""
        return np.column_stack([IdIndex(self.user_ids).positions(split.user_ids),
                                IdIndex(self.item_ids).positions(split.item_ids)])


class KarDCN(nn.Module):
    """DCN whose x_0 is the feature map's field embeddings followed by KAR's two adapted text
    fields. ``x_cat`` carries the feature map's fields, then the rows of the interaction's
    user and item in ``tables`` (``TextTables.positions``); the adapter runs once per distinct
    row of a batch."""

    user_table: torch.Tensor  # registered buffers (inputs, not learned: not in the state dict)
    item_table: torch.Tensor

    def __init__(self, fmap: FeatureMap, hp: FitSettings, tables: TextTables, experts: KarExpertsConfig) -> None:
        super().__init__()
        self.dcn = DCN(fmap, hp, extra_fields=len(FIELDS))
        self.n_cat = len(fmap.fields)
        self.register_buffer("user_table", tables.user, persistent=False)
        self.register_buffer("item_table", tables.item, persistent=False)
        self.adapter = HybridExperts(tables.user.shape[1], hp.embedding_dim, experts)

    def _field(self, field: int, table: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        distinct, inverse = torch.unique(rows, return_inverse=True)
        return self.adapter.field(field, table[distinct])[inverse]

    def forward(self, x_cat: torch.Tensor, x_dense: torch.Tensor) -> torch.Tensor:
        emb = self.dcn.embedding(x_cat[:, :self.n_cat], x_dense)
        texts = torch.stack([self._field(0, self.user_table, x_cat[:, self.n_cat]),
                             self._field(1, self.item_table, x_cat[:, self.n_cat + 1])], dim=1)
        return self.dcn.from_fields(torch.cat([emb, texts], dim=1))


@dataclass(frozen=True)
class KarResult:
    data_dir: str
    users: int                   # users and items of the data set
    items: int
    users_with_text: int
    items_with_text: int
    held_out_users: int
    held_out_with_text: int
    seeds: list[int]
    fits: list[dict[str, Any]]   # per seed and model: valid AUC history, best epoch, test per part
    test: dict[str, dict[str, dict[str, float]]]  # model (dcn, kar) -> part (PARTS) -> means
    p_values: dict[str, dict[str, float | None]]  # part -> metric -> paired t-test, kar vs dcn
    tokens: dict[str, int]       # user/item prompt and generated tokens, encoded tokens
    seconds: dict[str, float]    # generation and encoding (when first computed), CTR fits (this run)
    models: dict[str, dict[str, Any]]  # as same_data.OursResult: name -> {"test", "new_users", "lm_tokens"}
    out_dir: str


def job(cfg: KarConfig, data: OurData, out_dir: Path, cache_dir: Path) -> Once[KarResult]:
    """Texts and vectors (cached under ``cache_dir``: text chunks, vectors), then DCN with
    and without the KAR fields on ``data``; publishes ``out_dir`` with ``test_scores.parquet``,
    the first seed's KAR + DCN (``model_dir``) and ``metrics.json``."""
    config = {"kar": cfg.model_dump(mode="json"), "data": data.fingerprint,
              "cache_dir": str(Path(cache_dir).absolute())}
    return Once(out_dir, STAGE, config, KarResult, lambda folder: _run(cfg, data, folder, out_dir, Path(cache_dir)))


def model_dir(out_dir: Path, seed: int) -> Path:
    """Where a run keeps its KAR + DCN of ``seed`` (the first of ``cfg.seeds``)."""
    return Path(out_dir) / f"kar-seed{seed}"


@dataclass(frozen=True)
class Requests:
    """The users and items that get a text, with their prompts."""

    user_ids: list[str]
    user_prompts: list[str]
    item_ids: list[str]
    item_prompts: list[str]


def requests(data: Path, cfg: KarConfig) -> Requests:
    """Seeded user and item subsets (all when null) and their prompts: a user's from the
    ``history`` most recent train ratings (ties in time kept in file order)."""
    inter = pl.read_parquet(data / INTERACTIONS).with_columns(pl.col("user_id").cast(pl.String),
                                                              pl.col("item_id").cast(pl.String))
    items = pl.read_parquet(data / ITEMS).with_columns(pl.col("item_id").cast(pl.String))
    user_ids = sorted(inter["user_id"].unique().to_list())
    item_ids = sorted(inter["item_id"].unique().to_list())
    users = draw(user_ids, cfg.users, np.random.default_rng((cfg.seed, 0)), "kar: users")
    chosen_items = draw(item_ids, cfg.items, np.random.default_rng((cfg.seed, 1)), "kar: items")
    titles = dict(zip(items["item_id"], items["title"]))
    train = (inter.filter((pl.col("split") == "train") & pl.col("user_id").is_in(users))
             .with_row_index("line").sort(["user_id", "ts", "line"]))
    history = {u: list(zip(g["item_id"], g["rating"]))[-cfg.history:]
               for (u,), g in train.group_by(["user_id"], maintain_order=True)}
    attrs = _attributes(data)
    user_prompts = [kar_text.user_prompt([(titles.get(i) or i, r) for i, r in history.get(u, [])],
                                         attrs.get(u, {})) for u in users]
    meta = items.filter(pl.col("item_id").is_in(chosen_items))
    cats = dict(zip(meta["item_id"], meta["categories"]))
    item_prompts = [kar_text.item_prompt(titles.get(i) or i, cats.get(i)) for i in chosen_items]
    return Requests(users, user_prompts, chosen_items, item_prompts)


def _attributes(data: Path) -> dict[str, dict[str, str]]:
    path = data / USERS
    if not path.is_file():
        return {}
    users = pl.read_parquet(path).with_columns(pl.col("user_id").cast(pl.String))
    cols = [c for c in users.columns if c not in _NOT_ATTRIBUTES]
    return {r["user_id"]: {c: str(r[c]) for c in cols if r[c] is not None}
            for r in users.iter_rows(named=True)}


@dataclass(frozen=True)
class Knowledge:
    tables: TextTables
    tokens: dict[str, int]
    seconds: dict[str, float]


def knowledge(cfg: KarConfig, data: Path, cache_dir: Path) -> Knowledge:
    """Generate (or read back) every requested text, encode them, build the adapter tables."""
    req = requests(data, cfg)
    loaded = load_frozen_lm(cfg.model, cfg.device)
    tokens: dict[str, int] = {}
    seconds: dict[str, float] = {}
    vectors = {}
    for kind, ids, prompts in (("user", req.user_ids, req.user_prompts), ("item", req.item_ids, req.item_prompts)):
        folder = kar_text.text_folder(cache_dir / "texts", kind, cfg.model, cfg.max_new_tokens,
                                      cfg.chunk_rows, ids, prompts)
        texts = kar_text.generate_texts(loaded, folder, ids, prompts, cfg.max_new_tokens,
                                        cfg.chunk_rows, cfg.gen_batch_size)
        vectors[kind] = kar_text.encode_cached(loaded, texts, folder, cfg.encode_batch_size)
        tokens[f"{kind}_prompt"] = int(texts.frame["prompt_tokens"].sum())
        tokens[f"{kind}_generated"] = int(texts.frame["new_tokens"].sum())
        seconds[f"{kind}_generate"] = round(float(texts.frame["seconds"].sum()), 2)
    tokens["encoded"] = vectors["user"].tokens + vectors["item"].tokens
    seconds["encode"] = round(vectors["user"].seconds + vectors["item"].seconds, 2)
    hidden = int(loaded.model.config.hidden_size)
    tables = TextTables(TextTables.table(vectors["user"].vectors, hidden),
                        TextTables.table(vectors["item"].vectors, hidden),
                        vectors["user"].ids, vectors["item"].ids)
    return Knowledge(tables, tokens, seconds)


def _with_text_rows(split: Split, tables: TextTables) -> Split:
    return Split(split.user_ids, split.item_ids, np.hstack([split.x_cat, tables.positions(split)]),
                 split.x_dense, split.y)


def _held_out(data: OurData) -> np.ndarray | None:
    return data.held_out if len(data.held_out) else None


def _run(cfg: KarConfig, ours: OurData, folder: Path, out_dir: Path, cache_dir: Path) -> KarResult:
    data, held = ours.data_dir, _held_out(ours)
    know = knowledge(cfg, data, cache_dir)
    prepared = prepare(data, None, cfg.ctr.use_observed_features, held)
    splits = prepared.splits
    kar_splits = {k: _with_text_rows(s, know.tables) for k, s in splits.items()}
    test = splits["test"]
    labels = test.y.astype(np.int8)
    new = np.isin(test.user_ids, held) if held is not None else np.zeros(len(labels), bool)
    parts = {"all": np.ones(len(new), bool), "new": new,
             "new_text": new & np.isin(test.user_ids, know.tables.user_ids)}
    network = partial(KarDCN, tables=know.tables, experts=cfg.experts)
    t0 = time.perf_counter()
    fits, scores = [], {}
    for seed in cfg.seeds:
        for name, model, data_splits in (("dcn", build("dcn", prepared.fmap, cfg.ctr, seed), splits),
                                         ("kar", TorchModel(network, prepared.fmap, cfg.ctr, seed), kar_splits)):
            info = model.fit(data_splits["train"], data_splits["valid"], threads=cfg.threads)
            s = model.predict(data_splits["test"].x_cat, data_splits["test"].x_dense)
            if name == "kar" and seed == cfg.seeds[0]:
                model_dir(folder, seed).mkdir()
                model.save(model_dir(folder, seed))
            scores[(name, seed)] = s
            fits.append({"model": name, "seed": seed, "best_epoch": info.best_epoch,
                         "valid_auc": info.val_auc_history,
                         "test": {part: _metrics(test, labels, s, rows) for part, rows in parts.items()}})
            log.info("kar: %s seed %d: valid AUC %.4f at epoch %d, test AUC %.4f", name, seed,
                     info.val_auc, info.best_epoch, float(roc_auc_score(labels, s)))
    ctr_seconds = time.perf_counter() - t0

    frame = pl.DataFrame({"user_id": test.user_ids, "item_id": test.item_ids, "label": labels,
                          "new_user": new, "user_has_text": np.isin(test.user_ids, know.tables.user_ids)})
    frame.with_columns([pl.Series(f"score_{m}_seed{s}", v) for (m, s), v in scores.items()]).write_parquet(
        folder / "test_scores.parquet")
    tables, summary, n = know.tables, _summary(fits), len(cfg.seeds)
    ids = pl.read_parquet(data / INTERACTIONS, columns=["user_id", "item_id"])
    return KarResult(
        data_dir=str(data), users=ids["user_id"].n_unique(), items=ids["item_id"].n_unique(),
        users_with_text=len(tables.user_ids), items_with_text=len(tables.item_ids),
        held_out_users=0 if held is None else len(held),
        held_out_with_text=0 if held is None else int(np.isin(held, tables.user_ids).sum()),
        seeds=list(cfg.seeds), fits=fits, test=summary, p_values=_p_values(fits), tokens=know.tokens,
        seconds={**know.seconds, "ctr": round(ctr_seconds, 2)},
        models={f"KAR + DCN ({n} seeds)": _model(summary["kar"], sum(know.tokens.values())),
                f"DCN, KAR's paired fits ({n} seeds)": _model(summary["dcn"], 0)},
        out_dir=str(out_dir))


def _model(parts: dict[str, dict[str, float]], lm_tokens: int) -> dict[str, Any]:
    """One model's entry of ``KarResult.models``: all test rows and the new users' rows."""
    return {"test": parts.get("all"), "new_users": parts.get("new"), "lm_tokens": lm_tokens}


def scorer(cfg: KarConfig, data: OurData, out_dir: Path, cache_dir: Path, rows: int) -> Scoring | None:
    """For ``bench/serve.py``: the finished ``job`` in ``out_dir`` (None when there is none for
    these settings), its first seed's KAR + DCN scoring the first ``rows`` test rows in one
    call as serving would: each row's user and item looked up in the text tables (vectors
    computed offline and read from the cache), the adapter, DCN. The other fields' encoding
    (id -> index) is done once before, as ``prepare`` does it."""
    if job(cfg, data, out_dir, cache_dir).finished() is None:
        return None
    know = knowledge(cfg, data.data_dir, cache_dir)  # every text and vector is read back from the cache
    prepared = prepare(data.data_dir, None, cfg.ctr.use_observed_features, _held_out(data))
    model = TorchModel(partial(KarDCN, tables=know.tables, experts=cfg.experts), prepared.fmap, cfg.ctr, cfg.seeds[0])
    model.load(model_dir(out_dir, cfg.seeds[0]))
    t = prepared.splits["test"]
    test = Split(t.user_ids[:rows], t.item_ids[:rows], t.x_cat[:rows], t.x_dense[:rows], t.y[:rows])

    def score() -> int:
        split = _with_text_rows(test, know.tables)
        return len(model.predict(split.x_cat, split.x_dense))

    return score


def _metrics(test: Split, labels: np.ndarray, scores: np.ndarray, rows: np.ndarray) -> dict[str, float] | None:
    """AUC, logloss, UAUC and n of some test rows; None when they lack a label."""
    if len(np.unique(labels[rows])) < 2:
        return None
    return ctr_metrics(test.user_ids[rows], labels[rows], scores[rows])


def _summary(fits: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per model and part: each metric's mean (and ``<metric>_std``) over seeds, and n."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for model in ("dcn", "kar"):
        out[model] = {}
        for part in PARTS:
            runs = [f["test"][part] for f in fits if f["model"] == model and f["test"][part] is not None]
            if not runs:
                continue
            row: dict[str, float] = {"n": runs[0]["n"]}
            for m in METRICS:
                values = np.array([r[m] for r in runs])
                row[m], row[f"{m}_std"] = float(values.mean()), float(values.std())
            out[model][part] = row
    return out


def _p_values(fits: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Paired t-test over seeds of KAR + DCN against DCN, per part and metric."""
    by = {(f["model"], f["seed"]): f["test"] for f in fits}
    seeds = sorted({f["seed"] for f in fits})
    out: dict[str, dict[str, float | None]] = {}
    for part in PARTS:
        pairs = [(by[("kar", s)][part], by[("dcn", s)][part]) for s in seeds
                 if by[("kar", s)][part] is not None and by[("dcn", s)][part] is not None]
        out[part] = {m: paired_p_value([k[m] for k, _ in pairs], [d[m] for _, d in pairs]) for m in METRICS}
    return out
