"""The published data set, byte for byte, against the one the pre-streaming code wrote.

``tests/golden/prepare_outputs.json`` holds the sha256 of every output file of the cases
below, recorded with the code before review texts were streamed (commit b7a7258, ``python
-m tests.test_prepare_golden --write``); every case is one batch. Paths of the temp folder
in ``rejects.jsonl`` and ``stats.json`` are replaced by ``<tmp>`` before hashing. The hashes
hold for the pinned polars; a polars upgrade that changes its Parquet writer means
re-recording them from a commit known to be right. Data sets of several batches are
written through polars' streaming sink, whose row groups differ: they are checked row for
row against the one-batch build.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from userip.config import PrepareConfig
from userip.dataprep import pipeline
from userip.dataprep.layout import FILES, ITEMS
from userip.dataprep.readers import jsonl

GOLDEN = Path(__file__).parent / "golden" / "prepare_outputs.json"


def write_amazon2018(folder: Path, rows: int = 40_000, seed: int = 3) -> tuple[Path, Path]:
    """A seeded Amazon-2018-format dump: skewed users and items, repeated (user, item)
    pairs, reviews with and without text, and bad lines of each kind every few hundred."""
    rng = np.random.default_rng(seed)
    n_users, n_items = rows // 8, rows // 20
    words = "good bad fine great poor sturdy cheap soft loud quick slow nice".split()
    bad = [b'{"reviewerID": "A1", "asin": "B2", "ove', b"not json at all",
           b'{"reviewerID": "A\xff", "asin": "B2", "overall": 3.0, "unixReviewTime": 5}',
           b'{"reviewerID": "A9", "asin": "B1", "overall": "five", "unixReviewTime": 5}',
           b'{"asin": "B1", "overall": 4.0, "unixReviewTime": 5}', b"[1, 2]", b""]
    lines: list[bytes] = []
    for r in range(rows):
        if r % 397 == 5:
            lines.append(bad[r % len(bad)])
        user = int(n_users * rng.random() ** 2)
        item = int(n_items * rng.random() ** 1.5)
        record: dict[str, Any] = {
            "overall": float(rng.integers(1, 6)), "verified": True, "reviewTime": "09 13, 2009",
            "reviewerID": f"A{user:07d}", "asin": f"B{item:06d}",
            "style": {"Format:": " Paperback"}, "unixReviewTime": int(rng.integers(10**9, 1.5e9)),
        }
        if r % 11:
            record["reviewText"] = " ".join(rng.choice(words, int(rng.integers(1, 30))))
        if r % 53 == 0:
            del record["unixReviewTime"]  # reviewTime stands in
        lines.append(json.dumps(record).encode())
    reviews = folder / "reviews.json"
    reviews.write_bytes(b"\n".join(lines) + b"\n")
    meta = folder / "meta.json"
    with open(meta, "w", encoding="utf-8") as fh:
        for i in range(n_items):
            if i % 7 == 3:
                continue  # items without metadata
            fh.write(json.dumps({
                "asin": f"B{i:06d}", "title": f"Item {i} &amp; co" if i % 5 else "",
                "category": ["Books", f"Shelf {i % 13}"], "brand": f"Brand {i % 17}",
                "price": f"${i % 90}.99", "description": [f"<b>thing {i}</b>"]}) + "\n")
        fh.write('{"asin": "B9999", "title": "cut short\n')
    return reviews, meta


def cases(folder: Path) -> dict[str, PrepareConfig]:
    reviews, meta = write_amazon2018(folder)
    amazon = dict(source="amazon2018", reviews=reviews, meta=meta, max_reject_ratio=0.05)
    return {
        "ml100k": PrepareConfig(source="movielens-100k"),
        "ml100k-temporal-40-users": PrepareConfig(source="movielens-100k", split="temporal",
                                                  max_users=40),
        "ml1m": PrepareConfig(source="movielens-1m"),
        "amazon2018": PrepareConfig(**amazon, min_core=2),
        "amazon2018-temporal-core1": PrepareConfig(**amazon, min_core=1, split="temporal",
                                                   behaviour_review_words=3),
    }


def digests(out: Path, tmp: Path) -> dict[str, str]:
    """sha256 of each file of a published data set, the paths of the temp folder and of
    the environment (where the embedded MovieLens files live) masked."""
    found = {}
    for name in FILES:
        data = (out / name).read_bytes()
        if name.endswith((".json", ".jsonl")):
            for path, mask in ((tmp, b"<tmp>"), (Path(sys.prefix), b"<env>")):
                data = data.replace(json.dumps(str(path))[1:-1].encode(), mask)
        found[name] = hashlib.sha256(data).hexdigest()
    return found


def run_all(tmp: Path, cfgs: dict[str, PrepareConfig], tag: str = "") -> dict[str, Path]:
    """Prepare every case into ``tmp/<case><tag>``."""
    outs = {name: tmp / f"{name}{tag}" for name in cfgs}
    for name, cfg in cfgs.items():
        pipeline.prepare(cfg, outs[name])
    return outs


@pytest.mark.slow
def test_outputs_are_byte_identical_to_the_recorded_ones(tmp_path: Path) -> None:
    want = json.loads(GOLDEN.read_text())
    outs = run_all(tmp_path, cases(tmp_path))
    assert {name: digests(out, tmp_path) for name, out in outs.items()} == want


@pytest.mark.slow
def test_tiny_chunks_and_batches_change_no_row(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Many reader chunks and build batches (users cut across nothing, texts spooled per
    batch, Parquet through the streaming sink) give the same rows and the same stats and
    rejects, byte for byte, as one batch."""
    cfgs = {name: cfg for name, cfg in cases(tmp_path).items() if name != "ml1m"}
    whole = run_all(tmp_path, cfgs)
    monkeypatch.setattr(jsonl, "CHUNK_BYTES", 1 << 16)
    monkeypatch.setattr(pipeline, "BATCH_BYTES", 200_000)
    batched = run_all(tmp_path, cfgs, "-batched")
    for name in cfgs:
        for file in FILES:
            a, b = whole[name] / file, batched[name] / file
            if file.endswith(".parquet"):
                assert pl.read_parquet(b).equals(pl.read_parquet(a)), (name, file)
            else:
                assert b.read_bytes() == a.read_bytes(), (name, file)
        rows = json.loads((whole[name] / "stats.json").read_text())["interactions"]
        assert rows * pipeline.ROW_BYTES > 2 * pipeline.BATCH_BYTES, name  # several batches
        if name.startswith("amazon"):  # the items too, with their descriptions, in slices
            assert pq.ParquetFile(batched[name] / ITEMS).num_row_groups > 1, name


if __name__ == "__main__":  # record the hashes: python -m tests.test_prepare_golden --write
    import tempfile

    assert sys.argv[1:] == ["--write"], "usage: python -m tests.test_prepare_golden --write"
    with tempfile.TemporaryDirectory() as folder:
        GOLDEN.parent.mkdir(exist_ok=True)
        tmp = Path(folder)
        outs = run_all(tmp, cases(tmp))
        found = {name: digests(out, tmp) for name, out in outs.items()}
        GOLDEN.write_text(json.dumps(found, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
