"""The bank's user index (``feature_bank.index``) as a hostile user meets it: ids built to
collide under the published seed, a replaced or stale index, a pickle in place of the
index, banks published before the index existed; lookups checked against a plain dict."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from userip.errors import InputError
from userip.feature_bank import FeatureBank, publish
from userip.feature_bank.bank import BankError
from userip.feature_bank.index import INDEX_FILE, UserIndex, hash_ids
from userip.fingerprint import sha256_file
from userip.quantize.standin import write_standin

REPO = Path(__file__).resolve().parents[1]
M64 = (1 << 64) - 1


def _fmix(x: int) -> int:
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & M64
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & M64
    return x ^ (x >> 33)


def reference_hash(uid: str, seed: int) -> int:
    """The hash as feature_bank.index documents it, one Python int at a time."""
    raw = uid.encode()
    h = _fmix(((len(raw) * 0x9E3779B97F4A7C15) & M64) ^ seed)
    for k in range(0, len(raw), 8):
        h = _fmix(h ^ int.from_bytes(raw[k:k + 8], "little"))
    return h


def colliding_ids(seed: int, count: int) -> list[str]:
    """``count`` distinct 16-byte ASCII ids with one hash under ``seed``: for a first word
    w1 the second word that lands on the target is solved for, and kept when it is ASCII."""
    h0 = _fmix(((16 * 0x9E3779B97F4A7C15) & M64) ^ seed)
    target = _fmix(h0 ^ int.from_bytes(b"victim00", "little")) ^ int.from_bytes(b"account0", "little")
    found = ["victim00account0"]
    for i in range(100_000):
        w1 = f"craft{i:03d}".encode()[:8] if i < 1000 else f"c{i:07d}".encode()
        w2 = (target ^ _fmix(h0 ^ int.from_bytes(w1, "little"))).to_bytes(8, "little")
        if all(32 <= b < 127 for b in w2):
            found.append((w1 + w2).decode())
            if len(found) == count:
                return found
    raise AssertionError("no ASCII collision found")


def test_hash_is_the_documented_one_and_stable() -> None:
    ids = ["", "a", "a\0", "abcdefgh", "abcdefghi", "héllo wörld, a longer id of several words"]
    got = hash_ids(pa.array(ids), 12345)
    assert got.tolist() == [reference_hash(u, 12345) for u in ids]
    # pinned: a changed hash would leave every published index naming nobody
    assert hash_ids(pa.array(["u1", "user-000042"]), 0).tolist() == \
        [reference_hash("u1", 0), reference_hash("user-000042", 0)] == \
        [16392742401943309803, 304721391278347436]
    # chunk boundaries and sliced arrays hash the same as whole ones
    many = pa.array([f"id{i}" * (i % 5) for i in range(3000)])
    np.testing.assert_array_equal(hash_ids(many.slice(1000, 7), 9), hash_ids(pa.array(many.to_pylist()[1000:1007]), 9))


def test_ids_built_to_collide_are_each_answered_with_their_own_row() -> None:
    seed = 987654321
    crafted = colliding_ids(seed, 3)
    assert len(set(hash_ids(pa.array(crafted), seed).tolist())) == 1  # a real 3-way collision
    ids = sorted([*crafted, "u1", "u2"])
    index = UserIndex.build(pl.Series(ids), seed)
    query = [crafted[2], "nobody", crafted[0], "u2", crafted[1], crafted[0][:-1] + "9"]
    want = [ids.index(q) if q in ids else len(ids) for q in query]
    assert index.positions(query).tolist() == want


def test_lookup_matches_a_dict_for_odd_ids_and_queries(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    alphabet = list("abcxyz019-_ éü日本")
    users = sorted({"".join(rng.choice(alphabet, rng.integers(0, 30))) for _ in range(3000)})
    codes = write_standin(users, tmp_path / "kmeans", profiles=(("hobby", 40), ("background", 3)))
    publish(codes, tmp_path / "bank")
    bank = FeatureBank.open(tmp_path / "bank")
    frame = pl.read_parquet(codes / "codes.parquet")
    table = {u: (h, b) for u, h, b in frame.select("user_id", "hobby", "background").iter_rows()}
    unknown = (40, 3)
    query = [*rng.choice(users, 500), "nobody", "", "a" * 100, None, float("nan"), 7, *users[:3]]
    want = [table.get(q, unknown) if isinstance(q, str) else unknown for q in query]
    got = bank.lookup(np.array(query, dtype=object))
    assert got.dtype == np.int64 and got.tolist() == [list(w) for w in want]
    strings = np.array([q for q in query if isinstance(q, str)])  # a numpy str array
    assert bank.lookup(strings).tolist() == [list(table.get(q, unknown)) for q in strings]
    assert sorted(bank.user_ids) == users and bank.n_users == len(users)


@pytest.fixture()
def version(tmp_path: Path) -> Path:
    return publish(write_standin([f"u{i}" for i in range(60)], tmp_path / "kmeans", seed=2),
                   tmp_path / "bank")


def _manifest(version: Path) -> dict:
    return json.loads((version / "manifest.json").read_text())


def _replace_index(version: Path, blob: bytes | np.ndarray, seed: int | None = None) -> None:
    """A tamperer who writes their own index and fixes the manifest's hash (and seed)."""
    path = version / INDEX_FILE
    if isinstance(blob, bytes):
        path.write_bytes(blob)
    else:
        np.save(path, blob)
    manifest = _manifest(version)
    manifest["index"]["sha256"] = sha256_file(path)
    if seed is not None:
        manifest["index"]["seed"] = seed
    (version / "manifest.json").write_text(json.dumps(manifest))


def test_a_version_holds_its_index_named_in_the_manifest(version: Path) -> None:
    assert sorted(p.name for p in version.iterdir()) == [".userip-output", "codes.parquet",
                                                         "manifest.json", INDEX_FILE]
    entry = _manifest(version)["index"]
    assert entry["hash"] == "fmix64-words-v1" and entry["sha256"] == sha256_file(version / INDEX_FILE)
    table = np.load(version / INDEX_FILE)
    ids = pl.read_parquet(version / "codes.parquet")["user_id"].to_list()
    assert table.shape == (2, 60) and (np.diff(table[0].astype(np.float64)) >= 0).all()
    assert [reference_hash(ids[r], entry["seed"]) for r in table[1]] == table[0].tolist()


def test_a_replaced_index_is_refused(version: Path) -> None:
    table = np.load(version / INDEX_FILE)
    table[1] = table[1][::-1]
    np.save(version / INDEX_FILE, table)  # a valid index file, manifest hash not fixed
    with pytest.raises(BankError, match="user_index.npy: sha256 differs"):
        FeatureBank.open(version.parent)


@pytest.mark.parametrize("make, message", [
    (lambda t: np.stack([t[0], t[1] + np.uint64(60)]), "rows are out of range"),
    (lambda t: np.stack([t[0][::-1], t[1][::-1]]), "hashes are not sorted"),
    (lambda t: t[:, :59], r"not uint64 \(2, 60\)"),
    (lambda t: t.astype(np.int64), r"holds int64"),
    (lambda t: b"\x93NUMPY garbage", "not a valid .npy file"),
    (lambda t: pickle.dumps(t), "not a valid .npy file"),
])
def test_a_tampered_index_with_a_matching_hash_is_refused(version: Path, make, message) -> None:
    _replace_index(version, make(np.load(version / INDEX_FILE)))
    with pytest.raises(BankError, match=message):
        FeatureBank.open(version.parent)


def test_a_pickle_in_the_index_never_runs(version: Path, tmp_path: Path) -> None:
    flag = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(flag), "w"))

    _replace_index(version, np.array([Payload(), Payload()], dtype=object))
    with pytest.raises(BankError, match="not a valid .npy file"):
        FeatureBank.open(version.parent)
    assert not flag.exists()


def test_a_stale_index_never_serves_another_users_codes(tmp_path: Path) -> None:
    """Version A given version B's index (valid, sorted, rows in range, hash and seed
    fixed): every answer is the user's own codes or the unknown code, never another's."""
    a = publish(write_standin([f"a{i}" for i in range(80)], tmp_path / "qa", seed=1), tmp_path / "bank", keep=5)
    b = publish(write_standin([f"a{i}" for i in range(40, 120)], tmp_path / "qb", seed=4), tmp_path / "bank", keep=5)
    _replace_index(a, np.load(b / INDEX_FILE), seed=_manifest(b)["index"]["seed"])
    bank = FeatureBank.open(tmp_path / "bank", a.name)
    frame = pl.read_parquet(a / "codes.parquet")
    got = bank.lookup(frame["user_id"].to_numpy())
    own = frame.select("hobby", "background").to_numpy()
    unknown = np.array(bank.manifest.sizes)
    assert ((got == own) | (got == unknown)).all(axis=1).all()
    assert (got == unknown).all(axis=1).any()  # the stale index did lose users


def test_a_missing_index_is_an_incomplete_version(version: Path) -> None:
    (version / INDEX_FILE).unlink()
    with pytest.raises(BankError, match="incomplete version"):
        FeatureBank.open(version.parent)


@pytest.mark.parametrize("edit", [
    lambda e: {**e, "hash": "md5-of-nothing"}, lambda e: {**e, "seed": -1},
    lambda e: {**e, "seed": 2**64}, lambda e: {**e, "seed": "7"}, lambda e: "user_index.npy",
])
def test_an_unknown_index_entry_is_refused(version: Path, edit) -> None:
    manifest = _manifest(version)
    manifest["index"] = edit(manifest["index"])
    (version / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BankError, match="is not a 'fmix64-words-v1' index; re-publish"):
        FeatureBank.open(version.parent)


def test_a_bank_published_before_the_index_is_read(version: Path) -> None:
    manifest = _manifest(version)
    del manifest["index"]
    (version / "manifest.json").write_text(json.dumps(manifest))
    (version / INDEX_FILE).unlink()
    bank = FeatureBank.open(version.parent)
    frame = pl.read_parquet(version / "codes.parquet")
    np.testing.assert_array_equal(bank.lookup(frame["user_id"].to_numpy()),
                                  frame.select("hobby", "background").to_numpy())


def test_an_unsorted_codes_file_with_a_matching_hash_is_refused(version: Path) -> None:
    frame = pl.read_parquet(version / "codes.parquet")
    frame.reverse().write_parquet(version / "codes.parquet")
    manifest = _manifest(version)
    manifest["codes_sha256"] = sha256_file(version / "codes.parquet")
    (version / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="not in the sorted order publish wrote them in"):
        FeatureBank.open(version.parent)


def test_bench_reports_every_figure(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(REPO / "bench" / "bank_scale.py"), "--users", "3000",
                          "--workdir", str(tmp_path)], env=env, capture_output=True, text=True, check=True)
    row = json.loads(out.stdout)
    assert row["users"] == 3000 and set(row) >= {"publish_s", "open_s", "lookup_10k_ms", "max_rss_mb"}
    assert row["lookup_correct"] is True
    assert list(tmp_path.iterdir()) == []  # its work folder is removed
