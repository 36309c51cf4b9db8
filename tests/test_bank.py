"""Feature bank: publish/open/lookup, atomicity under a killed publisher, compatibility.

Codes here come from ``quantize.standin`` (k-means on random vectors): the bank only
stores and serves codes, so their meaning does not matter for these tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from userip.cli import main as cli_main
from userip.errors import InputError
from userip.feature_bank import LATEST, FeatureBank, IncompatibleBankError, memory_report, publish
from userip.feature_bank.bank import BankError
from userip.quantize.standin import write_standin

USERS = [f"u{i}" for i in range(50)]


@pytest.fixture()
def codes_dir(tmp_path: Path) -> Path:
    return write_standin(USERS, tmp_path / "q" / "kmeans", seed=1)


def test_publish_open_lookup_with_unknown_users(codes_dir: Path, tmp_path: Path) -> None:
    bank_dir = tmp_path / "bank"
    version = publish(codes_dir, bank_dir, keep=3, lm_id="smollm2-135m", data_fingerprint="abc")
    assert (bank_dir / LATEST).read_text().strip() == version.name
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["profiles"] == [{"name": "hobby", "K": 4}, {"name": "background", "K": 3}]
    assert manifest["n_rows"] == 50 and manifest["lm_id"] == "smollm2-135m"

    bank = FeatureBank.open(bank_dir)
    src = pl.read_parquet(codes_dir / "codes.parquet")
    got = bank.lookup(["u7", "nobody", "u0", "u7"])
    want7 = src.filter(pl.col("user_id") == "u7").select("hobby", "background").row(0)
    want0 = src.filter(pl.col("user_id") == "u0").select("hobby", "background").row(0)
    np.testing.assert_array_equal(got, [want7, [4, 3], want0, want7])  # unknown -> K_m
    assert got.dtype == np.int64 and bank.lookup([]).shape == (0, 2)


def test_keep_versions_and_explicit_version(codes_dir: Path, tmp_path: Path) -> None:
    bank_dir = tmp_path / "bank"
    made = [publish(codes_dir, bank_dir, keep=2) for _ in range(3)]
    left = sorted(p.name for p in bank_dir.glob("version=*"))
    assert left == [m.name for m in made[1:]]
    assert FeatureBank.open(bank_dir, made[1].name.removeprefix("version=")).manifest.version \
        == made[1].name.removeprefix("version=")
    with pytest.raises(BankError, match="does not exist"):
        FeatureBank.open(bank_dir, made[0].name)


def test_corrupt_and_mismatched_bank_are_clear_errors(codes_dir: Path, tmp_path: Path) -> None:
    bank_dir = tmp_path / "bank"
    version = publish(codes_dir, bank_dir)
    (version / "codes.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(InputError, match="cannot read Parquet"):
        FeatureBank.open(bank_dir)
    version = publish(codes_dir, bank_dir)
    manifest = json.loads((version / "manifest.json").read_text())
    manifest["n_rows"] = 49
    (version / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BankError, match="manifest says 49 rows"):
        FeatureBank.open(bank_dir)
    with pytest.raises(BankError, match="bank directory not found"):
        FeatureBank.open(tmp_path / "nope")


def test_bad_codes_rejected_before_publishing(tmp_path: Path) -> None:
    d = write_standin(USERS, tmp_path / "kmeans")
    df = pl.read_parquet(d / "codes.parquet").with_columns(
        pl.when(pl.col("user_id") == "u3").then(9).otherwise(pl.col("hobby")).alias("hobby"))
    df.write_parquet(d / "codes.parquet")
    with pytest.raises(InputError, match=r"code 9 outside \[0, 4\)"):
        publish(d, tmp_path / "bank")
    assert not (tmp_path / "bank" / LATEST).exists()


def test_compatibility_check(codes_dir: Path, tmp_path: Path) -> None:
    bank = FeatureBank.from_codes_dir(codes_dir)
    bank.check_compatible(bank.manifest.compat())
    other = FeatureBank.from_codes_dir(write_standin(USERS, tmp_path / "k2", profiles=(("hobby", 5), ("background", 3))))
    with pytest.raises(IncompatibleBankError, match="profiles"):
        other.check_compatible(bank.manifest.compat())
    cb = tmp_path / "codebooks.safetensors"
    cb.write_bytes(b"codebook-A")
    with_cb = FeatureBank.from_codes_dir(codes_dir, codebook=cb)
    with pytest.raises(IncompatibleBankError, match="codebook_hash"):
        with_cb.check_compatible(bank.manifest.compat())


def test_memory_report(codes_dir: Path, tmp_path: Path) -> None:
    publish(codes_dir, tmp_path / "bank")
    rep = memory_report(tmp_path / "bank", lm_dim=4096)
    assert rep["theta_fp32_bytes_per_user"] == 2 * 4096 * 4
    assert rep["bank_int32_bytes_per_user"] == 8
    assert 0 < rep["bank_parquet_bytes_per_user"] < rep["theta_fp32_bytes_per_user"]


_PUBLISHER = """
import sys
from userip.feature_bank import publish
while True:
    publish(sys.argv[1], sys.argv[2], keep=5)
"""


def test_killed_publisher_never_exposes_a_partial_version(tmp_path: Path) -> None:
    """A publisher loops over a 200k-user bank while this process keeps opening LATEST;
    it is killed as soon as a temp dir shows, until one kill lands mid-write (a ``.tmp-*`` dir is
    left). Every open must see a complete version that matches its manifest."""
    users = [f"user{i:07d}" for i in range(200_000)]
    codes = write_standin(users, tmp_path / "kmeans", dim=4)
    bank_dir = tmp_path / "bank"
    publish(codes, bank_dir, keep=5)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    killed_mid_write, opens = 0, 0
    for attempt in range(12):
        proc = subprocess.Popen([sys.executable, "-c", _PUBLISHER, str(codes), str(bank_dir)], env=env)
        for _ in range(3):  # read while the publisher writes and swaps versions
            assert FeatureBank.open(bank_dir).n_users == 200_000  # raises on a partial version
            opens += 1
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and not list(bank_dir.glob(".tmp-*")):
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_mid_write += bool(list(bank_dir.glob(".tmp-*")))
        assert FeatureBank.open(bank_dir).n_users == 200_000
        for v in bank_dir.glob("version=*"):
            assert (v / "manifest.json").is_file() and (v / "codes.parquet").is_file()
        if killed_mid_write and attempt >= 2:
            break
    assert killed_mid_write, "no kill landed mid-write; the test did not exercise atomicity"
    assert opens > 3
    publish(codes, bank_dir, keep=5)
    assert not list(bank_dir.glob(".tmp-*"))  # the next publish clears a killed one's temp dir


def test_export_cli(codes_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["export", "--codes", str(codes_dir), "--bank", str(tmp_path / "b")]) == 0
    assert "published" in capsys.readouterr().out
    assert cli_main(["export", "--codes", str(tmp_path / "missing"), "--bank", str(tmp_path / "b")]) == 2
    assert "meta.json not found" in capsys.readouterr().err
