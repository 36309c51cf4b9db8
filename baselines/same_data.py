"""The baselines on the project's own prepared split and its new-users protocol.

The data is ``prepare``'s output (``interactions.parquet``, ``items.parquet``); the users held
out of CTR training are the downstream stage's (``held_out.json`` of a finished run, or the
same seeded draw, ``downstream.suite.hold_out_users``). Every method learns from the other
users only: its K-shot / train rows are drawn from their train rows, its epochs are chosen on
their valid rows, and CoLLM's MF is fitted on their whole train split, so a held-out user is
as new to it as to the CTR model (an unknown MF user: the zero vector). A prompt is built
from the user's train history (the profile stage infers every user's, held-out ones too):
the ``history`` most recent train interactions with another item than the row's, liked
(label 1) or not, oldest first; TALLRec lists them as its preference and unpreference,
CoLLM lists the liked ones. Every method scores the same test rows: a seeded draw of
``test_samples`` of all test rows (AUC, Logloss, UAUC) and one of ``new_user_samples`` of the
held-out users' test rows (new-user AUC).

Each method publishes ``ours-<method>/`` (its own files, ``metrics.json`` with an
``OursResult``); a run whose method settings, data and held-out users have not changed is
read back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from userip.baselines import collm, collm_mf, tallrec
from userip.baselines.config import CollmConfig, SameDataConfig, TallrecConfig
from userip.baselines.lm import SegmentLM, answer_ids, load_adapter
from userip.baselines.runs import Once, draw
from userip.baselines.tallrec_data import Sample, sample_input
from userip.dataprep.layout import INTERACTIONS, ITEMS
from userip.downstream.metrics import ctr_metrics
from userip.downstream.train import users_fingerprint
from userip.errors import InputError
from userip.fingerprint import hash_paths
from userip.profile_infer.model_loading import load_frozen_lm

STAGES = {"tallrec": "baselines-ours-tallrec", "collm": "baselines-ours-collm"}  # MF's: collm_mf.STAGE
PARTS = ("train", "valid", "test")


@dataclass(frozen=True)
class OurData:
    data_dir: Path
    held_out: np.ndarray       # the users held out of training (sorted ids; empty: protocol off)
    fingerprint: dict[str, str]  # what a finished run's config is checked against


def prepared_dir(data_dir: Path) -> Path:
    """``data_dir`` when it holds a prepared data set; InputError otherwise."""
    data_dir = Path(data_dir)
    if not (data_dir / INTERACTIONS).is_file():
        raise InputError(f"not a prepared data dir (no {INTERACTIONS})", path=str(data_dir))
    return data_dir


def open_data(data_dir: Path, held_out: np.ndarray) -> OurData:
    data_dir = prepared_dir(data_dir)
    held = np.sort(np.asarray(held_out, dtype=object).astype(str))
    return OurData(data_dir, held, {"interactions": hash_paths([data_dir / INTERACTIONS, data_dir / ITEMS]),
                                    "held_out": users_fingerprint(held)})


@dataclass(frozen=True)
class Split:
    """The drawn rows of each part: user_id, item_id, title, label, new_user, history_title
    (oldest first), history_liked; test rows also ``scored_all`` (in the all-users draw)."""
    train: pl.DataFrame
    valid: pl.DataFrame
    test: pl.DataFrame


def _interactions(data: OurData) -> pl.DataFrame:
    inter = pl.read_parquet(data.data_dir / INTERACTIONS, columns=["user_id", "item_id", "ts", "label", "split"])
    items = pl.read_parquet(data.data_dir / ITEMS, columns=["item_id", "title"])
    return (inter.with_columns(pl.col("user_id").cast(pl.String), pl.col("item_id").cast(pl.String),
                               pl.col("label").cast(pl.Int8))
            .join(items.with_columns(pl.col("item_id").cast(pl.String)), on="item_id", how="left")
            .with_columns(pl.col("title").fill_null(pl.col("item_id")),
                          pl.col("user_id").is_in(pl.Series(list(data.held_out), dtype=pl.String).implode())
                          .alias("new_user")))


def _drawn(frame: pl.DataFrame, n: int | None, rng: np.random.Generator, what: str) -> pl.DataFrame:
    return frame[draw(range(frame.height), n, rng, what)]


def _with_history(rows: pl.DataFrame, train: pl.DataFrame, history: int) -> pl.DataFrame:
    """Each row's user's ``history`` most recent train interactions with another item."""
    recent = (train.sort(["user_id", "ts", "item_id"], descending=[False, True, False])
              .group_by("user_id", maintain_order=True)
              .agg("item_id", "title", "label"))
    by_user = {u: list(zip(i, t, lab)) for u, i, t, lab in recent.iter_rows()}
    titles, liked = [], []
    for user, item in zip(rows["user_id"], rows["item_id"]):
        kept = [(t, bool(lab)) for i, t, lab in by_user.get(user, []) if i != item][:history][::-1]
        titles.append([t for t, _ in kept])
        liked.append([like for _, like in kept])
    return rows.with_columns(pl.Series("history_title", titles, dtype=pl.List(pl.String)),
                             pl.Series("history_liked", liked, dtype=pl.List(pl.Boolean)))


def select(data: OurData, cfg: SameDataConfig, n_train: int | None, n_valid: int | None) -> Split:
    """The seeded draws: ``n_train`` / ``n_valid`` of the other users' train / valid rows, and
    the test rows every method scores (``cfg.test_samples`` of all, ``cfg.new_user_samples``
    of the held-out users'), in interaction-file order."""
    inter = _interactions(data)
    train_all = inter.filter(pl.col("split") == "train")
    part = {p: inter.filter(pl.col("split") == p) for p in PARTS}
    rng = [np.random.default_rng((cfg.seed, k)) for k in range(4)]
    train = _drawn(part["train"].filter(~pl.col("new_user")), n_train, rng[0], "same data: train rows")
    valid = _drawn(part["valid"].filter(~pl.col("new_user")), n_valid, rng[1], "same data: valid rows")
    test = part["test"].with_row_index("row")
    picked = set(_drawn(test, cfg.test_samples, rng[2], "same_data.test_samples")["row"].to_list())
    new = test.filter(pl.col("new_user"))
    extra = (set(_drawn(new, min(cfg.new_user_samples or new.height, new.height), rng[3],
                        "same_data.new_user_samples")["row"].to_list()) if new.height else set())
    test = (test.filter(pl.col("row").is_in(sorted(picked | extra)))
            .with_columns(pl.col("row").is_in(sorted(picked)).alias("scored_all")).drop("row"))
    return Split(*(_with_history(f, train_all, cfg.history) for f in (train, valid, test)))


@dataclass(frozen=True)
class OursResult:
    """A method on our split: one entry per model it scores (its headline model first), each
    with ``test`` (the all-users draw) and ``new_users`` (the held-out users' drawn rows;
    None when the protocol is off) metrics, and the LM tokens behind it."""

    method: str
    models: dict[str, dict[str, Any]]  # name -> {"test", "new_users", "lm_tokens"}
    n_train: int
    n_valid: int
    n_test: int
    n_new_user_rows: int
    train_tokens: int
    eval_tokens: int
    train_seconds: float
    eval_seconds: float
    run: dict[str, Any]  # the method's own result (TallrecResult / CollmResult) on these rows
    out_dir: str


def _metrics(test: pl.DataFrame, scores: np.ndarray) -> dict[str, Any]:
    users, labels = test["user_id"].to_numpy(), test["label"].to_numpy().astype(np.int8)
    out: dict[str, Any] = {}
    for name, mask in (("test", test["scored_all"].to_numpy()), ("new_users", test["new_user"].to_numpy())):
        # None where the rows lack a label (AUC undefined) or there are none (protocol off)
        out[name] = ctr_metrics(users[mask], labels[mask], scores[mask]) if len(set(labels[mask])) == 2 else None
    return out


def _result(method: str, split: Split, scores: dict[str, tuple[np.ndarray, int]], run: Any,
            out_dir: Path) -> OursResult:
    return OursResult(
        method=method, models={name: {**_metrics(split.test, s), "lm_tokens": tokens}
                               for name, (s, tokens) in scores.items()},
        n_train=split.train.height, n_valid=split.valid.height, n_test=split.test.height,
        n_new_user_rows=int(split.test["new_user"].sum()), train_tokens=run.train_tokens,
        eval_tokens=run.eval_tokens, train_seconds=run.train_seconds, eval_seconds=run.eval_seconds,
        run=asdict(run), out_dir=str(out_dir))


def _config(section: TallrecConfig | CollmConfig, cfg: SameDataConfig, data: OurData) -> dict[str, Any]:
    return {"method": section.model_dump(mode="json"), "same_data": cfg.model_dump(mode="json"),
            "data": data.fingerprint}


# ---- TALLRec ---------------------------------------------------------------------------

def tallrec_samples(frame: pl.DataFrame) -> list[Sample]:
    return [Sample(u, i, sample_input(list(zip(h, liked)), t), int(y))
            for u, i, t, y, h, liked in frame.select("user_id", "item_id", "title", "label", "history_title",
                                                     "history_liked").iter_rows()]


def tallrec_parts(split: Split) -> tallrec.Parts:
    return tallrec.Parts(*(tallrec_samples(f) for f in (split.train, split.valid, split.test)))


def tallrec_job(section: TallrecConfig, cfg: SameDataConfig, data: OurData, out_dir: Path) -> Once[OursResult]:
    """TALLRec (K = ``section.shots`` of the other users' train rows) on our split."""
    def compute(folder: Path) -> OursResult:
        split = select(data, cfg, section.shots, section.valid_samples)
        result = tallrec.tune_and_score(section, tallrec_parts(split), folder, out_dir)
        scores = pl.read_parquet(folder / "test_scores.parquet")["score"].to_numpy()
        tokens = result.train_tokens + result.eval_tokens
        return _result("tallrec", split, {f"TALLRec K={section.shots}": (scores, tokens)}, result, out_dir)

    return Once(out_dir, STAGES["tallrec"], _config(section, cfg, data), OursResult, compute)


# ---- CoLLM -----------------------------------------------------------------------------

def collm_rows(frame: pl.DataFrame, train: pl.DataFrame, warm_min_count: int) -> collm.Rows:
    """Our rows as CoLLM reads them: the liked titles of the history, MF's item key."""
    liked = [[t for t, like in zip(h, lk) if like]
             for h, lk in zip(frame["history_title"], frame["history_liked"])]
    rows = frame.with_columns(pl.col("item_id").alias("item"),
                              pl.Series("his_title", liked, dtype=pl.List(pl.String)))
    return collm.Rows(rows.with_columns(pl.Series("warm", collm_mf.warm_rows(train, rows, warm_min_count))))


def mf_parts(data: OurData) -> collm_mf.Parts:
    """MF's rows: the other users' train and valid rows, every test row."""
    inter = _interactions(data).with_columns(pl.col("item_id").alias("item"))
    return {p: inter.filter((pl.col("split") == p) & (~pl.col("new_user") | (p == "test"))) for p in PARTS}


def collm_job(section: CollmConfig, cfg: SameDataConfig, data: OurData, out_dir: Path,
              mf_dir: Path) -> Once[OursResult]:
    """CoLLM-MF on our split; its MF (``mf_dir``) is fitted on the other users' train split."""
    mf_job = collm_mf.job(section.mf, mf_dir, lambda: mf_parts(data), data.fingerprint)

    def compute(folder: Path) -> OursResult:
        mf = mf_job.run()
        split = select(data, cfg, section.train_samples, section.valid_samples)
        train = mf_parts(data)["train"]
        parts = {p: collm_rows(f, train, section.mf.warm_min_count)
                 for p, f in zip(PARTS, (split.train, split.valid, split.test))}
        result = collm.two_stages(section, parts, mf, folder, out_dir)
        saved = pl.read_parquet(folder / "test_scores.parquet")
        tokens = result.train_tokens + result.eval_tokens
        return _result("collm", split, {"CoLLM-MF": (saved["score"].to_numpy(), tokens),
                                        "CoLLM stage 1 (text only)": (saved["score_text"].to_numpy(), tokens),
                                        "MF (CoLLM's)": (saved["score_mf"].to_numpy(), 0)},
                       result, out_dir)

    return Once(out_dir, STAGES["collm"], {**_config(section, cfg, data), "mf_dir": str(Path(mf_dir).absolute())},
                OursResult, compute)


# ---- serving: each finished method scoring our test rows --------------------------------

Scoring = Callable[[], int]
"""Scores the bench's rows once with a finished method; returns how many rows it scored."""



def tallrec_scorer(section: TallrecConfig, cfg: SameDataConfig, data: OurData, out_dir: Path,
                   rows: int) -> Scoring | None:
    """For ``bench/serve.py``: the finished ``tallrec_job`` in ``out_dir`` (None when there is
    none for these settings), loaded from its adapter, scoring the first ``rows`` drawn test
    rows in one call, as serving would (prompts built, LM run)."""
    if tallrec_job(section, cfg, data, out_dir).finished() is None:
        return None
    samples = tallrec_samples(select(data, cfg, section.shots, section.valid_samples).test[:rows])
    loaded = load_frozen_lm(section.model, section.device)
    lm = SegmentLM(load_adapter(loaded.model, Path(out_dir) / "adapter"), loaded.tokenizer, loaded.device)
    scorer = tallrec.Scorer(lm, section.eval_batch_size, samples[0].prompt)
    return lambda: len(scorer(samples))


def collm_scorer(section: CollmConfig, cfg: SameDataConfig, data: OurData, out_dir: Path, mf_dir: Path,
                 rows: int) -> Scoring | None:
    """``tallrec_scorer`` for ``collm_job``: adapter, mapper and MF vectors, the full prompts."""
    done = collm_job(section, cfg, data, out_dir, mf_dir).finished()
    if done is None:
        return None
    split = select(data, cfg, section.train_samples, section.valid_samples)
    test = collm_rows(split.test[:rows], mf_parts(data)["train"], section.mf.warm_min_count)
    vectors = collm_mf.load_vectors(Path(done.run["mf_dir"]))
    loaded = load_frozen_lm(section.model, section.device)
    lm = SegmentLM(load_adapter(loaded.model, Path(out_dir) / "adapter"), loaded.tokenizer, loaded.device)
    mapper = collm.load_mapper(Path(out_dir), vectors.user.shape[1], lm.hidden_size, section.mapper_scale)
    model = collm.Model(lm, answer_ids(loaded.tokenizer, collm.END, collm.ANSWERS)[0], section.eval_batch_size)
    prompts = collm.full_prompts(section.history, vectors, mapper.to(lm.device), lm.device)
    return lambda: len(model.score(test, prompts))
