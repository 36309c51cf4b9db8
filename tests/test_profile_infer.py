"""End-to-end profile inference on a tiny random Llama: outputs, bad input, resume,
incremental refresh. (Plumbing only; the real-model run is in test_profile_smollm2.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import torch
from safetensors.torch import load_file

from tests.profile_fixtures import write_data_dir
from userip.cli import main as cli_main
from userip.config import ProfileConfig, load_config
from userip.errors import ConfigError
from userip.profile_infer import infer
from userip.profile_infer.layout import Profile
from userip.profile_infer.model_loading import load_frozen_lm

ROOT = Path(__file__).resolve().parents[1]


def tiny_cfg(model: Path, **kw) -> ProfileConfig:
    base = dict(model=str(model), max_target_tokens=16, batch_size=4, warmup_epochs=1,
                max_epochs=2, checkpoint_every=2, explain_users=2, lr=1e-2)
    return ProfileConfig(**{**base, **kw})


def test_full_run_publishes_every_output(tiny, tmp_path):
    data = write_data_dir(tmp_path / "data", n_users=12, empty_text_users=1)
    out = infer(tiny_cfg(tiny), data, tmp_path / "profile")
    files = sorted(p.name for p in out.iterdir())
    assert files == [".userip-output", "codebooks.safetensors", "codes.parquet", "curves.csv",
                     "explanation.json", "meta.json", "surrogate.safetensors",
                     "surrogate_items.parquet", "theta.safetensors"]
    codes = pl.read_parquet(out / "codes.parquet")
    assert codes.columns == ["user_id", "hobby", "dist_hobby", "background", "dist_background"]
    assert codes.schema["hobby"] == pl.Int32 and codes.schema["dist_hobby"] == pl.Float32
    assert codes["hobby"].is_between(0, 3).all() and codes["background"].is_between(0, 2).all()
    assert "u000" not in codes["user_id"].to_list() and len(codes) == 11
    meta = json.loads((out / "meta.json").read_text())
    assert meta["skipped"]["empty_behaviour_text"] == 1
    assert [(p["name"], p["K"]) for p in meta["profiles"]] == [("hobby", 4), ("background", 3)]
    assert meta["n_users"] == 11
    assert meta["evidence"]["draws"] == 1 and "feedback" in meta["evidence"]
    assert meta["lm_tokens"]["train"] > 0 and meta["lm_tokens"]["eval"] > 0
    curves = pl.read_csv(out / "curves.csv")
    assert curves["phase"].to_list() == ["init", "warmup", "joint", "joint"]
    assert curves["train_llm"][0] is None and curves["train_vec"][1] is None
    assert curves["train_llm"][1:].is_finite().all() and curves["valid_llm"].is_finite().all()
    assert curves["train_rec"][2:].is_finite().all()
    explain = json.loads((out / "explanation.json").read_text())
    assert len(explain["profiles"]["hobby"]) == 4 and len(explain["users"]) == 2
    assert len(explain["profiles"]["hobby"][0]["nearest_tokens"][0]) == 5
    theta = load_file(str(out / "theta.safetensors"))["theta"]
    assert theta.shape == (11, 2, 32)
    assert not (tmp_path / "profile.ckpt").exists()
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".profile")]
    assert leftovers == []


def test_bad_model_dirs_give_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_frozen_lm(str(tmp_path / "nope"))
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"architectures": ["BertModel"]}')
    with pytest.raises(ConfigError, match="not a causal LM"):
        load_frozen_lm(str(tmp_path / "bert"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        load_frozen_lm(str(tmp_path / "empty"))


def test_tokenizer_without_pad_falls_back_to_eos(tiny, tmp_path):
    import shutil

    from transformers import AutoTokenizer
    shutil.copytree(tiny, tmp_path / "nopad")
    tok = AutoTokenizer.from_pretrained(tiny)
    tok.pad_token = None
    tok.save_pretrained(tmp_path / "nopad")
    loaded = load_frozen_lm(str(tmp_path / "nopad"))
    assert loaded.pad_fallback and loaded.tokenizer.pad_token_id == loaded.tokenizer.eos_token_id
    assert all(not p.requires_grad for p in loaded.model.parameters())


def _infer_on_empty_data(model: Path, tmp_path: Path, capsys) -> tuple[int, str]:
    """``userip infer`` with ``model`` on an empty data folder: exit code and stderr."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"profile:\n  model: {model}\n")
    (tmp_path / "data").mkdir()
    rc = cli_main(["infer", "--config", str(cfg), "--data", str(tmp_path / "data"),
                   "--out", str(tmp_path / "out")])
    return rc, capsys.readouterr().err


def test_cli_reports_bad_input_in_one_line(tiny, tmp_path, capsys):
    rc, err = _infer_on_empty_data(tiny, tmp_path, capsys)
    assert rc == 2 and "behaviour.parquet" in err and "Traceback" not in err


def test_a_broken_model_config_is_one_line_naming_it(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{not json")
    rc, err = _infer_on_empty_data(tmp_path / "model", tmp_path, capsys)
    assert rc == 2 and "config.json: not a readable model config" in err and "Traceback" not in err


def test_an_item_longer_than_the_context_is_cut_and_counted(tiny, tmp_path):
    data = write_data_dir(tmp_path / "data", n_users=6)
    beh = pl.read_parquet(data / "behaviour.parquet")
    long = pl.concat_str([pl.col("items").list.first()] * 80, separator=" and ")
    beh.with_columns(pl.concat_list(long, pl.col("items")).alias("items")
                     ).write_parquet(data / "behaviour.parquet")
    # 1000 target tokens do not fit the tiny model's 256 positions: the window is cut to fit
    out = infer(tiny_cfg(tiny, max_target_tokens=1000, max_epochs=1, batch_size=3),
                data, tmp_path / "p")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["skipped"]["items_cut_to_window"] == 6


def _run_cli(cfg: Path, data: Path, out: Path, extra: list[str] = ()) -> subprocess.Popen:
    code = "import sys; from userip.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", code, "infer", "--config", str(cfg),
                             "--data", str(data), "--out", str(out), *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow  # a subprocess or server start: seconds to minutes
def test_sigkill_and_restart_ends_with_the_same_codes(tiny, tmp_path):
    data = write_data_dir(tmp_path / "data", n_users=40)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"profile:\n  model: {tiny}\n  max_target_tokens: 16\n  batch_size: 2\n"
                   f"  warmup_epochs: 1\n  max_epochs: 2\n  patience: 5\n"
                   f"  checkpoint_every: 3\n  lr: 0.01\n")
    # uninterrupted, in a process of its own like the killed one: bit-equality needs the same
    # torch thread count, which earlier tests in this process may have changed
    ref = _run_cli(cfg, data, tmp_path / "ref")
    _, err = ref.communicate(timeout=240)
    assert ref.returncode == 0, err

    ckpt = tmp_path / "killed.ckpt"
    proc = _run_cli(cfg, data, tmp_path / "killed")
    deadline = time.time() + 120
    def state_file() -> tuple[int, int] | None:
        files = list(ckpt.glob("state.*.pt")) if ckpt.exists() else []
        return (files[0].stat().st_ino, files[0].stat().st_mtime_ns) if files else None

    first = None
    while first is None or state_file() in (None, first):  # kill once a second checkpoint lands
        first = first or state_file()
        assert proc.poll() is None, "run ended before its second checkpoint"
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed").exists(), "a killed run must not publish"
    again = _run_cli(cfg, data, tmp_path / "killed")
    _, err = again.communicate(timeout=240)
    assert again.returncode == 0, err
    assert "resumed from" in err
    a, b = Profile.read(tmp_path / "ref"), Profile.read(tmp_path / "killed")
    assert a.codes.equals(b.codes)
    assert torch.equal(a.theta, b.theta)
    assert all(torch.equal(x, y) for x, y in zip(a.codebooks, b.codebooks))


def test_incremental_refresh_touches_only_given_users(tiny, tmp_path):
    data = write_data_dir(tmp_path / "data", n_users=12)
    cfg = tiny_cfg(tiny)
    out = infer(cfg, data, tmp_path / "p")
    before = Profile.read(out)
    (tmp_path / "users.txt").write_text("u002\nu005\n")
    infer(cfg, data, out, users_file=tmp_path / "users.txt")
    after = Profile.read(out)
    assert after.user_ids == before.user_ids
    changed = [before.user_ids.index(u) for u in ("u002", "u005")]
    others = [i for i in range(12) if i not in changed]
    assert torch.equal(after.theta[others], before.theta[others])
    assert not torch.equal(after.theta[changed], before.theta[changed])
    assert all(torch.equal(x, y) for x, y in zip(after.codebooks, before.codebooks))
    assert all(torch.equal(after.surrogate[k], v) for k, v in before.surrogate.items())
    keep = ~pl.col("user_id").is_in(["u002", "u005"])
    assert after.codes.filter(keep).equals(before.codes.filter(keep))
    assert after.meta.mode == "incremental" and after.meta.refreshed_users == 2


@pytest.mark.slow  # a subprocess or server start: seconds to minutes
def test_two_torchrun_processes_match_one(tiny, tmp_path):
    data = write_data_dir(tmp_path / "data", n_users=16)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"profile:\n  model: {tiny}\n  max_target_tokens: 16\n  batch_size: 4\n"
                   f"  warmup_epochs: 1\n  max_epochs: 1\n  lr: 0.01\n  nproc: 2\n")
    proc = _run_cli(cfg, data, tmp_path / "p2")  # the CLI relaunches itself under torchrun
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    infer(load_config(cfg).profile.model_copy(update={"nproc": 1}), data, tmp_path / "p1")
    one, two = Profile.read(tmp_path / "p1"), Profile.read(tmp_path / "p2")
    assert two.meta.world_size == 2 and one.meta.world_size == 1
    assert one.user_ids == two.user_ids
    torch.testing.assert_close(one.theta, two.theta, rtol=0, atol=1e-5)
    for a, b in zip(one.codebooks, two.codebooks):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert one.codes.select("user_id", "hobby", "background").equals(
        two.codes.select("user_id", "hobby", "background"))
