"""Downstream zoo on tiny real data (the first 40 MovieLens-100K users, 1 epoch).

Profile codes are stand-ins (FAISS k-means on random vectors, ``quantize.standin``):
these tests check plumbing and contracts, not that codes help.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from sklearn.metrics import roc_auc_score

from userip.cli import main as cli_main
from userip.cli.summary import summary_table
from userip.downstream.features import load_users, open_codes
from userip.downstream.layout import FitRecord, Job, JobMetrics, ReportMetrics, RunLayout
from userip.downstream.metrics import ctr_metrics
from userip.downstream.models import MODELS, NETWORKS
from userip.downstream.models.torch_model import FoldedScore
from userip.downstream.train import Scorer, fit, prepare
from userip.errors import ConfigError, InputError
from userip.feature_bank import FeatureBank, IncompatibleBankError, publish
from userip.hyper import FitSettings, Hyper
from userip.quantize.standin import write_standin

FIT = FitSettings(epochs=1, batch_size=256, lr=1e-3, patience=1)


# report.md's headings and table headers for the run of test_cli_train_evaluate_report, as
# the report wrote them at b7a7258, before its tables were declared as data: the same
# sections and columns, in the same order.
REPORT_STRUCTURE = [
    "# Downstream CTR report",
    "## Table 2 analogue: every model, with and without `userip` codes",
    "| model | AUC without | AUC with | Logloss without | Logloss with | UAUC with | R.I. AUC | R.I. Logloss | p (AUC) | seeds |",
    "## Table 3: `userip` codes (trained with the DCN surrogate) transferred to other models",
    "| model | AUC without | AUC with | Logloss without | Logloss with | UAUC with | R.I. AUC | R.I. Logloss | p (AUC) | seeds |",
    "## Table 4: quantization ablation",
    "| model | variant | method | K per profile | AUC | Logloss | UAUC | R.I. AUC | p (AUC) |",
    "## Figs 6–7 analogues: AUC / Logloss against codebook size",
    "## New users: held out of CTR training",
    "| model | variant | method | codes cover | AUC | Logloss | UAUC | ΔAUC | p (AUC) | seeds |",
    "## AUC by user activity (train interactions per user)",
    "### Paper protocol (all users)",
    "| model | variant | <=10 (0 users, 0 rows) | 11-50 (21 users, 82 rows) | >50 (19 users, 320 rows) |",
    "### New users (held out of CTR training)",
    "| model | variant | <=10 (0 users, 0 rows) | 11-50 (4 users, 15 rows) | >50 (4 users, 58 rows) |",
    "## Epoch selection",
    "| protocol | model | cap | best epoch min / median / max | cap bound for |",
    "## Does the profile carry the user?",
    "## Profile probe: do codes predict held-out user attributes?",
    "| variant | attribute | accuracy | majority | classes | test users |",
]


def report_structure(report: str) -> list[str]:
    """Headings and the header line of every table, in order."""
    lines = report.splitlines()
    return [line for i, line in enumerate(lines) if line.startswith("#")
            or (line.startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("|---"))]


@pytest.fixture(scope="module")
def codes_dir(ml100k_small_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    users = pl.read_parquet(ml100k_small_dir / "users.parquet")["user_id"].to_list()
    return write_standin(users, tmp_path_factory.mktemp("q") / "userip", method="userip")


@pytest.fixture(scope="module")
def prepared(ml100k_small_dir: Path, codes_dir: Path):
    return prepare(ml100k_small_dir, open_codes(codes_dir), use_observed=True)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fit_save_load_predict(name: str, prepared, codes_dir: Path, tmp_path: Path) -> None:
    rec = fit(name, prepared, tmp_path / name, seed=0, variant="userip", hp=FIT)
    scorer = Scorer(tmp_path / name)
    va = prepared.splits["valid"]
    p = scorer.predict_encoded(va.x_cat, va.x_dense)
    assert p.shape == (len(va.y),) and np.all((p > 0) & (p < 1))
    # the saved state is the one validation AUC was recorded for
    assert roc_auc_score(va.y, p) == pytest.approx(rec.val_auc, abs=1e-6)
    assert scorer.record.hyper == FIT and scorer.record.model == name
    assert scorer.record.codes["compat_hash"] == FeatureBank.from_codes_dir(codes_dir).manifest.compat_hash


@pytest.mark.parametrize("name", ["dcn", "lightgbm"])
def test_same_seed_gives_identical_fits(name: str, prepared, tmp_path: Path) -> None:
    """Two fits with one seed in one process (the first moves the global RNG state on, as
    earlier fits do in a worker) predict the test split bit-identically."""
    te = prepared.splits["test"]
    recs, preds = [], []
    for run in ("a", "b"):
        recs.append(fit(name, prepared, tmp_path / run, seed=3, variant="userip",
                        hp=FIT.model_copy(update={"epochs": 2, "patience": 2})))
        preds.append(Scorer(tmp_path / run).predict_encoded(te.x_cat, te.x_dense))
    np.testing.assert_array_equal(preds[0], preds[1])
    assert (recs[0].val_auc, recs[0].best_epoch) == (recs[1].val_auc, recs[1].best_epoch)
    assert ctr_metrics(te.user_ids, te.y, preds[0]) == ctr_metrics(te.user_ids, te.y, preds[1])


def test_epoch_is_chosen_on_validation(prepared, tmp_path: Path) -> None:
    rec = fit("dcn", prepared, tmp_path / "m", seed=1, variant="userip",
              hp=FIT.model_copy(update={"epochs": 4, "patience": 4}))
    hist = rec.val_auc_history
    assert len(hist) == 4 and rec.best_epoch == int(np.argmax(hist)) + 1
    assert rec.val_auc == pytest.approx(max(hist), abs=1e-6)


def test_unknown_users_items_and_bank_compatibility(prepared, ml100k_small_dir: Path,
                                                    codes_dir: Path, tmp_path: Path) -> None:
    fit("dcn", prepared, tmp_path / "m", seed=0, variant="userip", hp=FIT)
    scorer = Scorer(tmp_path / "m")
    bank_dir = tmp_path / "bank"
    publish(codes_dir, bank_dir)
    bank = FeatureBank.open(bank_dir)
    fmap = scorer.fmap
    x_cat, _ = fmap.encoder(None, bank).encode(np.array(["ghost", fmap.users[0]], dtype=object),
                                               np.array(["no-such-item", fmap.items[0]], dtype=object))
    assert x_cat[0, 0] == len(fmap.users) and x_cat[0, 1] == len(fmap.items)   # OOV indices
    assert list(x_cat[0, -2:]) == [4, 3]                                          # bank's unknown code
    p = scorer.score(np.array(["ghost", fmap.users[0]]), np.array(["no-such-item", fmap.items[0]]), None, bank)
    assert np.all(np.isfinite(p))
    # a user the bank knows but the model never saw: the OOV user index and the bank's codes
    newer = FeatureBank.from_codes_dir(write_standin([*fmap.users, "newcomer"], tmp_path / "newer", seed=7))
    ids = np.array(["newcomer", fmap.users[1], "ghost"], dtype=object)
    x_cat, _ = fmap.encoder(None, newer).encode(ids, np.array(fmap.items[:3], dtype=object))
    assert list(x_cat[:, 0]) == [len(fmap.users), 1, len(fmap.users)]
    np.testing.assert_array_equal(x_cat[:, -2:], newer.lookup(ids))

    other = write_standin(fmap.users, tmp_path / "k5", profiles=(("hobby", 5), ("background", 3)))
    with pytest.raises(IncompatibleBankError, match="profiles"):
        scorer.score(np.array([fmap.users[0]]), np.array([fmap.items[0]]), None, open_codes(other))
    with pytest.raises(ConfigError, match="trained with codes profiles"):
        scorer.score(np.array([fmap.users[0]]), np.array([fmap.items[0]]), None, None)


def test_closed_form_cross_network_matches_the_layer_loop(prepared) -> None:
    """DCN computes its cross network in closed form (x_l = a_l * x_0 + c_l); it must equal
    the textbook x_{l+1} = x_0 * (x_l . w_l) + b_l + x_l, layer by layer."""
    torch.manual_seed(0)
    model = NETWORKS["dcn"](prepared.fmap, Hyper(cross_layers=4)).eval()
    with torch.no_grad():
        model.cross.b.normal_()  # non-zero biases exercise c_l
        x_cat = torch.from_numpy(prepared.splits["test"].x_cat[:64])
        x0 = model.embedding(x_cat, torch.zeros(64, 0)).flatten(1)
        x = x0
        for w, b in zip(model.cross.w, model.cross.b):
            x = x0 * (x @ w)[:, None] + b + x
        expected = model.head(torch.cat([x, model.deep(x0)], dim=1)).squeeze(1)
        torch.testing.assert_close(model(x_cat, torch.zeros(64, 0)), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("profiles", ["codes", "dense"])
def test_folded_dcn_scores_like_its_forward_pass(profiles: str, prepared, ml100k_small_dir: Path,
                                                  codes_dir: Path, tmp_path: Path) -> None:
    """Scoring folds DCN's user-level fields into per-user rows (DCN.fold); the click
    probabilities must match the plain forward pass, unknown users and items included."""
    if profiles == "codes":
        data, source = prepared, open_codes(codes_dir)
    else:
        users = pl.read_parquet(ml100k_small_dir / "users.parquet")["user_id"].to_list()
        source = open_codes(write_standin(users, tmp_path / "none", method="none"))
        data = prepare(ml100k_small_dir, source, use_observed=True)
    fit("dcn", data, tmp_path / "m", seed=0, variant=profiles, hp=FIT)
    scorer, users_table = Scorer(tmp_path / "m"), load_users(ml100k_small_dir)
    test = pl.read_parquet(ml100k_small_dir / "interactions.parquet").filter(pl.col("split") == "test")
    uid = np.array(["ghost", *test["user_id"].to_list()], dtype=object)
    iid = np.array([*test["item_id"].to_list(), "no-such-item"], dtype=object)
    folded = scorer.score(uid, iid, users_table, source)
    assert isinstance(scorer.bind(users_table, source), FoldedScore)  # the folded path ran
    full = scorer.predict_encoded(*scorer.encoder(users_table, source).encode(uid, iid))
    np.testing.assert_allclose(folded, full, rtol=0, atol=1e-6)


def test_bad_labels_and_corrupt_parquet(ml100k_small_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(ml100k_small_dir, data)
    inter = pl.read_parquet(data / "interactions.parquet")
    inter.with_columns(pl.when(pl.int_range(pl.len()) == 7).then(2).otherwise(pl.col("label"))
                       .cast(pl.Int8).alias("label")).write_parquet(data / "interactions.parquet")
    with pytest.raises(InputError, match=r"interactions.parquet:7: label must be 0 or 1, found 2"):
        prepare(data, None, use_observed=False)
    (data / "interactions.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match="cannot read Parquet"):
        prepare(data, None, use_observed=False)


def test_cli_train_evaluate_report(ml100k_small_dir: Path, codes_dir: Path, tmp_path: Path) -> None:
    q = tmp_path / "quantize"
    shutil.copytree(codes_dir, q / "userip")
    users = pl.read_parquet(ml100k_small_dir / "users.parquet")["user_id"].to_list()
    write_standin(users, q / "kmeans", method="kmeans", seed=3)
    write_standin(users, q / "sweep" / "hobby_K8", method="kmeans", profiles=(("hobby", 8), ("background", 3)),
                  seed=4, sweep={"profile": "hobby", "K": 8})
    write_standin(users, q / "none", method="none")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("downstream:\n  models: [dcn]\n  transfer_models: [pnn]\n  seeds: [0, 1]\n"
                   "  epochs: 1\n  batch_size: 256\n")
    run = tmp_path / "run"
    common = ["--config", str(cfg), "--data", str(ml100k_small_dir)]
    assert cli_main(["train", *common, "--codes", str(q), "--out", str(run)]) == 0
    assert cli_main(["evaluate", *common, "--run", str(run)]) == 0
    assert cli_main(["report", "--config", str(cfg), "--data", str(ml100k_small_dir), "--run", str(run)]) == 0
    metrics = ReportMetrics.read(run)
    dcn = metrics.models["dcn"]
    assert set(dcn) == {"without", "userip", "kmeans", "sweep-hobby_K8", "none"}
    assert set(metrics.models["pnn"]) == {"without", "userip"}
    assert dcn["userip"].n_seeds == 2 and dcn["userip"].p_value is not None
    report = RunLayout(run).report.read_text()
    assert "STAND-IN" in report
    assert report_structure(report) == REPORT_STRUCTURE
    assert metrics.figures == ["fig6_auc_vs_codebook_size.png", "fig7_logloss_vs_codebook_size.png"]
    assert all(RunLayout(run).figure(f).stat().st_size > 0 for f in metrics.figures)
    assert set(metrics.probe["userip"]) == {"occupation", "gender", "age_band"}
    # the end-of-run summary renders the same summaries through the report's table renderer
    summary = summary_table({"report": str(run)}).splitlines()
    assert summary[1:3] == ["| model | variant | AUC | Logloss | UAUC | R.I. AUC | p (AUC) |", "|" + "---|" * 7]
    without = dcn["without"]
    assert any(line.startswith(f"| dcn | without | {without.auc:.4f} ± {without.auc_std:.4f} |")
               for line in summary)
    assert summary[-1] == f"report   {RunLayout(run).report}"
    # scoring a codes model against an incompatible bank is refused by evaluate
    bank = tmp_path / "bank"
    publish(q / "sweep" / "hobby_K8", bank)
    assert cli_main(["evaluate", *common, "--run", str(run), "--bank", str(bank)]) == 2


def test_cli_train_from_bank_and_rescore_after_republish(ml100k_small_dir: Path, codes_dir: Path,
                                                         tmp_path: Path) -> None:
    """A model trained on bank version A scores against a newer compatible version B."""
    bank, run = tmp_path / "bank", tmp_path / "run"
    publish(codes_dir, bank)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("downstream:\n  models: [dcn]\n  transfer_models: []\n  seeds: [0]\n  epochs: 1\n")
    common = ["--config", str(cfg), "--data", str(ml100k_small_dir)]
    assert cli_main(["train", *common, "--bank", str(bank), "--out", str(run)]) == 0
    model_dir = RunLayout(run).model_dir(Job("userip", "dcn", 0))
    assert FitRecord.read(model_dir).codes["version"] == FeatureBank.open(bank).manifest.version
    publish(codes_dir, bank)  # same codebook and profiles: compatible
    assert cli_main(["evaluate", *common, "--run", str(run), "--bank", str(bank)]) == 0
    assert JobMetrics.read(model_dir).n > 0


def test_codes_for_other_users_are_warned_about(ml100k_small_dir: Path, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    from userip.config import DownstreamConfig
    from userip.downstream.suite import train_all

    write_standin([f"stranger{i}" for i in range(40)], tmp_path / "q" / "kmeans", seed=1)
    section = DownstreamConfig(models=("dcn",), transfer_models=(), ablation_models=("dcn",),
                               seeds=(0,), epochs=1, new_user_share=0.0)
    with caplog.at_level("WARNING", logger="userip.downstream.suite"):
        train_all(section, ml100k_small_dir, tmp_path / "run", codes=tmp_path / "q")
    assert "variant kmeans has codes for 0% of the data set's users" in caplog.text


def test_fit_key_is_the_fit_settings_only() -> None:
    """A fit's cache key is the dump of FitSettings' fields: run settings and the plan of
    which fits run leave it alone; every learned field moves it."""
    from userip.config import DownstreamConfig

    base = DownstreamConfig()
    assert base.key() == FitSettings().key()
    for run_only in ({"threads": 2}, {"workers": 3}, {"task_runner": "dask"}, {"seeds": (7,)},
                     {"models": ("pnn",)}, {"new_user_share": 0.0}):
        assert base.model_copy(update=run_only).key() == base.key(), run_only
    for learned in ({"epochs": 7}, {"mlp": (8,)}, {"lr": 0.01}, {"use_observed_features": True}):
        assert DownstreamConfig(**learned).key() != base.key(), learned
    # JSON round trip of the section (tuples included), no patching
    section = DownstreamConfig(mlp=(32, 16), seeds=(0, 3))
    assert DownstreamConfig.model_validate_json(section.model_dump_json()) == section


def test_saved_state_is_never_unpickled(prepared, tmp_path: Path) -> None:
    """A model.pt replaced by a pickle that would run code is refused by torch's
    weights_only loader; the code never runs."""
    import pickle

    fit("dcn", prepared, tmp_path / "m", seed=0, variant="userip", hp=FIT)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (marker.write_text, ("pwned",))

    (tmp_path / "m" / RunLayout.TORCH_STATE).write_bytes(pickle.dumps(Payload()))
    with pytest.raises(pickle.UnpicklingError):
        Scorer(tmp_path / "m")
    assert not marker.exists()
