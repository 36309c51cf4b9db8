"""Ablation quantizers over a published profile (θ written by the real publish code)."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch

from userip.cli import main as cli_main
from userip.config import ProfileConfig, QuantizeConfig
from userip.errors import InputError
from userip.profile_infer.codebooks import codes_frame
from userip.profile_infer.layout import ProfileEntry, ProfileMeta
from userip.profile_infer.outputs import publish
from userip.quantize import quantize


@pytest.fixture()
def profile_dir(tmp_path):
    """60 users whose θ form 3 clear clusters per profile, published like `userip infer`."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 2, 8)) * 5
    labels = np.repeat(np.arange(3), 20)
    theta = torch.tensor(centres[labels] + rng.normal(size=(60, 2, 8)) * 0.1, dtype=torch.float32)
    cfg = ProfileConfig()
    codebooks = [torch.tensor(rng.normal(size=(4, 8)), dtype=torch.float32),
                 torch.tensor(rng.normal(size=(3, 8)), dtype=torch.float32)]
    ids = [f"u{i:02d}" for i in range(60)]
    codes = codes_frame(ids, theta, codebooks, [p.name for p in cfg.profiles], (slice(0, 1), slice(1, 2)))
    meta = ProfileMeta(
        model="synthetic", model_path="-", device="cpu", data_dir=str(tmp_path / "no-data"),
        dtype="float32", config_fingerprint="-", n_users=60, n_items=0, hidden_size=8,
        profiles=[ProfileEntry(name=p.name, K=p.codebook_size, n_tokens=1, context=p.context)
                  for p in cfg.profiles], mode="full", refreshed_users=60, epochs_run=1,
        early_stopped=False, published_epoch=0, reseeded_codes={}, theta_init="shared",
        skipped={}, pad_token_fallback=False, world_size=1)
    return publish(tmp_path / "profile", theta=theta, user_ids=ids, codebooks=codebooks,
                   surrogate_state={"w": torch.zeros(1)}, item_ids=[], codes=codes, curves=[],
                   explain={}, meta=meta), labels


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    return len(set(zip(a.tolist(), b.tolist()))) == len(set(a.tolist())) == len(set(b.tolist()))


def test_every_method_writes_its_output(profile_dir, tmp_path):
    path, labels = profile_dir
    cfg = QuantizeConfig(none_dim=4, sweep={"hobby": (2, 5)})
    out = quantize(cfg, path, tmp_path / "q")
    for method in ("userip", "kmeans", "agglomerative"):
        meta = json.loads((out / method / "meta.json").read_text())
        assert meta["method"] == method and meta["kind"] == "codes"
        codes = pl.read_parquet(out / method / "codes.parquet")
        assert codes.columns == ["user_id", "hobby", "dist_hobby", "background",
                                 "dist_background"]
        assert codes.schema["background"] == pl.Int32
    assert pl.read_parquet(out / "userip" / "codes.parquet").equals(
        pl.read_parquet(path / "codes.parquet"))
    for method in ("kmeans", "agglomerative"):
        bg = pl.read_parquet(out / method / "codes.parquet")["background"].to_numpy()
        assert same_partition(bg, labels), method  # K=3 recovers the 3 planted clusters
    dense = pl.read_parquet(out / "none" / "dense.parquet")
    assert dense.columns == ["user_id"] + [f"hobby_{j}" for j in range(4)] + \
        [f"background_{j}" for j in range(4)]
    assert json.loads((out / "none" / "meta.json").read_text())["kind"] == "dense"
    sweep = json.loads((out / "sweep" / "hobby_K5" / "meta.json").read_text())
    assert sweep["sweep"]["K"] == 5 and "k-means" in sweep["sweep"]["note"]
    hobby = pl.read_parquet(out / "sweep" / "hobby_K5" / "codes.parquet")["hobby"]
    assert hobby.n_unique() == 5


def test_agglomerative_on_a_sample_still_codes_everyone(profile_dir, tmp_path):
    path, labels = profile_dir
    out = quantize(QuantizeConfig(methods=("agglomerative",), agglomerative_max_users=15),
                   path, tmp_path / "q")
    codes = pl.read_parquet(out / "agglomerative" / "codes.parquet")
    assert len(codes) == 60 and same_partition(codes["background"].to_numpy(), labels)


def test_bad_profile_dir_and_cli(profile_dir, tmp_path, capsys):
    with pytest.raises(InputError, match="meta.json"):
        quantize(QuantizeConfig(), tmp_path / "missing", tmp_path / "q")
    path, _ = profile_dir
    cfg = tmp_path / "c.yaml"
    cfg.write_text("quantize:\n  methods: [kmeans]\n")
    assert cli_main(["quantize", "--config", str(cfg), "--profile", str(path),
                     "--out", str(tmp_path / "q")]) == 0
    assert (tmp_path / "q" / "kmeans" / "codes.parquet").is_file()
    bad = pl.read_parquet(path / "codes.parquet").with_columns(pl.lit(7, pl.Int32).alias("hobby"))
    bad.write_parquet(path / "codes.parquet")
    (tmp_path / "d.yaml").write_text("quantize:\n  methods: [userip]\n")
    rc = cli_main(["quantize", "--config", str(tmp_path / "d.yaml"), "--profile", str(path),
                   "--out", str(tmp_path / "q2")])
    assert rc == 2 and "outside [0, 4)" in capsys.readouterr().err
    assert not (tmp_path / "q2").exists()
