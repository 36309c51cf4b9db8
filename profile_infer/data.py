"""Read the dataprep outputs the profile stage needs, with the bad-input fallbacks.

A user's train history (``behaviour.parquet`` ``items``: one phrase per item, oldest
first) is tokenized item by item and packed into windows of at most
``max_target_tokens`` tokens without ever cutting inside an item; each visit of a user
trains on the next window, so over the epochs θ sees the whole history. Validation uses
the first window of the user's valid-split items.

Fallbacks (counted in ``skipped`` and reported in meta.json): users without a train item
are skipped (no θ, no code); an item longer than a whole window is cut to it (counted);
users without train interactions keep their θ but add nothing to ℓ_rec.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from userip.dataprep.behaviour import SEPARATOR, has_feedback
from userip.dataprep.layout import BEHAVIOUR, BEHAVIOUR_VALID, INTERACTIONS
from userip.errors import InputError

log = logging.getLogger(__name__)

READS = (BEHAVIOUR, BEHAVIOUR_VALID, INTERACTIONS)  # the data set's files this stage reads

BEHAVIOUR_COLUMNS: dict[str, pl.DataType | type[pl.DataType]] = {
    "user_id": pl.String, "user_idx": pl.Int32, "items": pl.List(pl.String)}


@dataclass
class ProfileData:
    user_ids: list[str]                 # table row -> user id (sorted by user_idx)
    windows: list[list[list[int]]]      # table row -> its train-history windows of token ids
    valid_rows: np.ndarray              # rows that have a validation text
    valid_targets: list[list[int]]      # aligned with valid_rows
    evidence_rows: np.ndarray           # rows whose validation text scores the evidence
    evidence_targets: list[list[int]]   # aligned with evidence_rows
    inter_offsets: np.ndarray           # CSR over rows into inter_items / inter_labels
    inter_items: np.ndarray
    inter_labels: np.ndarray
    item_ids: list[str]                 # surrogate item row -> item id
    skipped: dict[str, int] = field(default_factory=dict)
    feedback: bool = True               # the texts mark items liked / disliked (the source rates)

    def window(self, row: int, visit: int) -> list[int]:
        """Target ids of ``row``'s visit number ``visit``: its windows in turn, most recent first."""
        wins = self.windows[row]
        return wins[-1 - visit % len(wins)]

    def coverage(self, visits: int) -> float:
        """Mean share of a user's train-history windows seen in ``visits`` visits."""
        return float(np.mean([min(visits, len(w)) / len(w) for w in self.windows]))

    def interactions(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(position in ``rows``, surrogate item row, label) of the train interactions of ``rows``."""
        starts, ends = self.inter_offsets[rows], self.inter_offsets[rows + 1]
        pos = np.repeat(np.arange(len(rows)), ends - starts)
        idx: np.ndarray | list[int] = (
            np.concatenate([np.arange(s, e) for s, e in zip(starts, ends)]) if len(rows) else [])
        idx = np.asarray(idx, dtype=np.int64)
        return pos, self.inter_items[idx], self.inter_labels[idx]


def _read(path: Path, columns: dict[str, pl.DataType | type[pl.DataType]]) -> pl.DataFrame:
    if not path.is_file():
        raise InputError("file not found (run `userip prepare` first)", path=str(path))
    try:
        frame = pl.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - polars/arrow raise many kinds
        raise InputError(f"not a readable Parquet file: {exc}", path=str(path)) from exc
    for name, dtype in columns.items():
        if name not in frame.columns:
            raise InputError("missing column", path=str(path), field=name)
        try:
            frame = frame.with_columns(pl.col(name).cast(dtype))
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"column cannot be read as {dtype}: {exc}",
                             path=str(path), field=name) from exc
    return frame


def pack_windows(tokenizer, histories: list[list[str]], limit: int
                 ) -> tuple[list[list[list[int]]], int]:
    """Each history's phrases as ``" phrase;"`` token runs, packed greedily (oldest first)
    into windows of at most ``limit`` tokens; returns the windows and how many items had
    to be cut because one alone exceeds ``limit``."""
    flat = [p for h in histories for p in h]
    ids = tokenizer([f" {p}{SEPARATOR.strip()}" for p in flat], add_special_tokens=False).input_ids
    out, cut, i = [], 0, 0
    for h in histories:
        wins: list[list[int]] = []
        cur: list[int] = []
        for item in ids[i: i + len(h)]:
            if len(item) > limit:
                item, cut = item[:limit], cut + 1
            if cur and len(cur) + len(item) > limit:
                wins.append(cur)
                cur = []
            cur = cur + item
        wins.append(cur)
        out.append(wins)
        i += len(h)
    return out, cut


def load_profile_data(data_dir: Path, tokenizer, max_target_tokens: int,
                      users: set[str] | None = None, valid_max_users: int | None = None,
                      seed: int = 0, evidence_max_users: int | None = None,
                      item_vocab: list[str] | None = None) -> ProfileData:
    """Behaviour texts -> target ids; train interactions -> CSR by table row.

    Surrogate item rows are keyed by item id: ``item_vocab`` (the base profile's, in
    incremental mode) fixes them, so a new dump's re-indexed ``item_idx`` cannot point a
    frozen surrogate at the wrong item; interactions with items outside it are skipped.
    """
    data_dir = Path(data_dir)
    beh = _read(data_dir / BEHAVIOUR, BEHAVIOUR_COLUMNS).sort("user_idx")
    dup = beh.filter(pl.col("user_id").is_duplicated())
    if len(dup):
        raise InputError(f"user {dup['user_id'][0]!r} appears more than once",
                         path=str(data_dir / BEHAVIOUR), field="user_id")
    unknown = 0
    if users is not None:
        beh = beh.filter(pl.col("user_id").is_in(list(users)))
        unknown = len(users) - len(beh)
        if unknown:
            log.warning("%d listed users have no behaviour text; skipped", unknown)
    empty = beh.filter(pl.col("items").is_null() | (pl.col("items").list.len() == 0))
    beh = beh.filter(~pl.col("user_id").is_in(empty["user_id"].to_list()))
    skipped = {"empty_behaviour_text": len(empty), "listed_users_not_in_data": unknown}
    if len(empty):
        log.warning("skipping %d users with an empty behaviour text (e.g. %s)",
                    len(empty), empty["user_id"][0])
    if not len(beh):
        raise InputError("no user with a non-empty behaviour text",
                         path=str(data_dir / BEHAVIOUR), field="items")
    user_ids = beh["user_id"].to_list()
    windows, skipped["items_cut_to_window"] = pack_windows(tokenizer, beh["items"].to_list(),
                                                           max_target_tokens)
    row_of = {u: i for i, u in enumerate(user_ids)}

    valid_path = data_dir / BEHAVIOUR_VALID
    held: dict[str, tuple[np.ndarray, list[list[int]]]] = {}
    if valid_path.is_file():
        val = _read(valid_path, BEHAVIOUR_COLUMNS).sort("user_idx")
        val = val.filter(pl.col("user_id").is_in(user_ids) & (pl.col("items").list.len() > 0))
        first = [w[0] for w in pack_windows(tokenizer, val["items"].to_list(), max_target_tokens)[0]]
        rows = np.array([row_of[u] for u in val["user_id"].to_list()], dtype=np.int64)
        for name, cap, salt in (("valid", valid_max_users, 0), ("evidence", evidence_max_users, 1)):
            pick = np.arange(len(rows))
            if cap is not None and len(rows) > cap:  # a fixed seeded subset
                pick = np.sort(np.random.default_rng(seed + salt).choice(len(rows), cap, replace=False))
            held[name] = (rows[pick], [first[i] for i in pick])
    else:
        log.warning("%s missing: no validation LM loss, no early stopping", valid_path)

    inter = _read(data_dir / INTERACTIONS,
                  {"user_id": pl.String, "item_id": pl.String, "item_idx": pl.Int32,
                   "label": pl.Int8, "split": pl.String, "rating": pl.Float32})
    if item_vocab is None:
        item_vocab = inter.select("item_id", "item_idx").unique().sort("item_idx")["item_id"].to_list()
    vocab = pl.DataFrame({"item_id": item_vocab,
                          "srow": np.arange(len(item_vocab), dtype=np.int64)})
    train = inter.filter(pl.col("split") == "train")
    known = train.join(vocab, on="item_id", how="inner")
    skipped["train_interactions_with_unknown_items"] = len(train) - len(known)
    train = (known.join(pl.DataFrame({"user_id": user_ids,
                                      "row": np.arange(len(user_ids), dtype=np.int64)}),
                        on="user_id", how="inner")
             .sort("row"))
    rows = train["row"].to_numpy()
    counts = np.bincount(rows, minlength=len(user_ids))
    skipped["users_without_train_interactions"] = int((counts == 0).sum())
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    none: tuple[np.ndarray, list[list[int]]] = (np.zeros(0, dtype=np.int64), [])
    return ProfileData(user_ids, windows, *held.get("valid", none), *held.get("evidence", none),
                       offsets, train["srow"].to_numpy().astype(np.int64),
                       train["label"].to_numpy().astype(np.int64), item_vocab, skipped,
                       has_feedback(inter))
