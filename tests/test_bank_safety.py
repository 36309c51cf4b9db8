"""The bank as a hostile user leaves it: tampered versions, odd LATEST pointers, bad codes
at export, two publishers at once with readers in a loop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from userip.atomic import OutputDirError
from userip.errors import InputError
from userip.feature_bank import LATEST, FeatureBank, publish
from userip.feature_bank.bank import BankError
from userip.quantize.standin import write_standin

USERS = [f"u{i}" for i in range(40)]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def codes_dir(tmp_path: Path) -> Path:
    return write_standin(USERS, tmp_path / "q" / "kmeans", seed=3)


def _rewrite(version: Path, frame: pl.DataFrame, *, fix_sha: bool) -> None:
    frame.write_parquet(version / "codes.parquet")
    if fix_sha:  # a tamperer who also fixes the manifest's hash
        import hashlib

        manifest = json.loads((version / "manifest.json").read_text())
        manifest["codes_sha256"] = hashlib.sha256((version / "codes.parquet").read_bytes()).hexdigest()
        (version / "manifest.json").write_text(json.dumps(manifest))


def test_a_replaced_codes_file_is_refused(codes_dir: Path, tmp_path: Path) -> None:
    v = publish(codes_dir, tmp_path / "bank")
    frame = pl.read_parquet(v / "codes.parquet")
    _rewrite(v, frame.with_columns(pl.col("hobby").reverse()), fix_sha=False)  # valid codes
    with pytest.raises(BankError, match="sha256 differs"):
        FeatureBank.open(tmp_path / "bank")


@pytest.mark.parametrize("edit, message", [
    (lambda f: f.with_columns(pl.lit(4, pl.Int32).alias("hobby")), r"code 4 outside \[0, 4\)"),
    (lambda f: f.with_columns(pl.lit(-1, pl.Int32).alias("background")), r"code -1 outside"),
    (lambda f: f.with_columns(pl.lit("u1").alias("user_id")), "occurs more than once"),
    (lambda f: f.with_columns(pl.lit(None, pl.String).alias("user_id")), "user_id is null"),
])
def test_tampered_codes_are_refused_even_with_a_matching_hash(codes_dir: Path, tmp_path: Path,
                                                              edit, message) -> None:
    v = publish(codes_dir, tmp_path / "bank")
    _rewrite(v, edit(pl.read_parquet(v / "codes.parquet")), fix_sha=True)
    with pytest.raises(InputError, match=message):
        FeatureBank.open(tmp_path / "bank")


def test_a_lowered_k_is_refused(codes_dir: Path, tmp_path: Path) -> None:
    v = publish(codes_dir, tmp_path / "bank")
    manifest = json.loads((v / "manifest.json").read_text())
    top = int(pl.read_parquet(v / "codes.parquet")["hobby"].max())
    manifest["profiles"][0]["K"] = top  # the real code `top` would equal the unknown code
    (v / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=rf"code {top} outside \[0, {top}\)"):
        FeatureBank.open(tmp_path / "bank")


@pytest.mark.parametrize("pointer", ["../x", "/etc", "version=../../x", "", "version=a/b"])
def test_latest_must_name_a_version_inside_the_bank(codes_dir: Path, tmp_path: Path,
                                                    pointer: str) -> None:
    publish(codes_dir, tmp_path / "bank")
    (tmp_path / "x").mkdir()
    (tmp_path / "bank" / LATEST).write_text(pointer + "\n")
    with pytest.raises(BankError, match="not a version inside the bank"):
        FeatureBank.open(tmp_path / "bank")


def test_an_older_manifest_without_a_hash_is_refused(codes_dir: Path, tmp_path: Path) -> None:
    v = publish(codes_dir, tmp_path / "bank")
    manifest = json.loads((v / "manifest.json").read_text())
    del manifest["codes_sha256"]
    (v / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BankError, match="no codes_sha256"):
        FeatureBank.open(tmp_path / "bank")


@pytest.mark.parametrize("make, message", [
    (lambda f: f.with_columns(pl.when(pl.col("user_id") == "u2").then(None)
                              .otherwise(pl.col("user_id")).alias("user_id")), "user_id is null"),
    (lambda f: f.with_columns(pl.col("hobby").cast(pl.Float64) + 0.7), "not integer"),
    (lambda f: f.head(0), "no users"),
    (lambda f: f.with_columns(pl.col("user_id").map_elements(lambda u: [u], return_dtype=pl.List(pl.String))),
     "not text or integer"),
])
def test_export_refuses_bad_codes(tmp_path: Path, make, message) -> None:
    d = write_standin(USERS, tmp_path / "bad")
    make(pl.read_parquet(d / "codes.parquet")).write_parquet(d / "codes.parquet")
    with pytest.raises(InputError, match=message):
        publish(d, tmp_path / "bank")
    assert not (tmp_path / "bank" / LATEST).exists()


def test_reserved_profile_name_is_refused(tmp_path: Path) -> None:
    d = write_standin(USERS, tmp_path / "k", profiles=(("hobby", 4), ("dist_hobby", 3)))
    with pytest.raises(InputError, match="'dist_hobby' is reserved"):
        publish(d, tmp_path / "bank")


def test_bank_into_a_user_folder_is_refused(codes_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "a.txt").write_text("keep")
    with pytest.raises(OutputDirError, match="refusing to replace it"):
        publish(codes_dir, tmp_path / "mine")
    assert sorted(os.listdir(tmp_path / "mine")) == ["a.txt"]


def test_latest_moves_only_to_the_newest_version(codes_dir: Path, tmp_path: Path) -> None:
    bank = tmp_path / "bank"
    first = publish(codes_dir, bank)
    # a newer version than any this clock will name: what a publisher that started later
    # but finished first leaves behind
    future = bank / "version=29990101T000000.000000Z"
    first.rename(future)
    manifest = json.loads((future / "manifest.json").read_text())
    manifest["version"] = "29990101T000000.000000Z"
    (future / "manifest.json").write_text(json.dumps(manifest))
    (bank / LATEST).write_text(future.name + "\n")
    late = publish(codes_dir, bank)
    assert late.is_dir() and (bank / LATEST).read_text().strip() == future.name
    assert FeatureBank.open(bank).source == str(future)


def test_grace_keeps_the_version_latest_named_last(codes_dir: Path, tmp_path: Path) -> None:
    bank = tmp_path / "bank"
    a = publish(codes_dir, bank, keep=1, grace_seconds=3600)
    b = publish(codes_dir, bank, keep=1, grace_seconds=3600)
    assert a.is_dir() and b.is_dir()  # a was LATEST a moment ago: a reader may be opening it
    c = publish(codes_dir, bank, keep=1, grace_seconds=0)
    assert not a.exists() and not b.exists() and c.is_dir()


_PUBLISHER = """
import sys
from userip.feature_bank import publish
for _ in range(int(sys.argv[3])):
    publish(sys.argv[1], sys.argv[2], keep=2, grace_seconds=0)
"""


def test_two_concurrent_publishers_with_readers_in_a_loop(tmp_path: Path) -> None:
    """keep=2 and no grace: the worst case for a reader. Never a half version, never a
    failed open, every version complete on disk."""
    users = [f"user{i:06d}" for i in range(20_000)]
    codes = write_standin(users, tmp_path / "kmeans", dim=4)
    bank = tmp_path / "bank"
    publish(codes, bank, keep=2)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _PUBLISHER, str(codes), str(bank), "15"],
                              env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    opens = 0
    while any(p.poll() is None for p in procs):
        assert FeatureBank.open(bank).n_users == 20_000
        opens += 1
    assert [p.returncode for p in procs] == [0, 0], [p.stderr.read() for p in procs]
    assert opens > 0
    names = [p.name for p in bank.iterdir()]
    versions = [n for n in names if n.startswith("version=")]
    assert len(versions) == 2 and not [n for n in names if n.startswith(".tmp-")]
    assert (bank / LATEST).read_text().strip() == max(versions)
    for v in versions:
        FeatureBank.open(bank, v)
