"""Every bad setting or path at the CLI is one line naming the file and field, exit 2,
and `userip run` refuses before it starts a Prefect server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from userip.cli import main as cli_main
from userip.config import load_config
from userip.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
ENV.pop("PREFECT_API_URL", None)


def _one_line_error(capsys, argv: list[str]) -> str:
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, expected", [
    ("nmae: x\n", "nmae: Extra inputs are not permitted"),
    ("prepare: {min_core: -3}\n", "prepare.min_core: Input should be greater than or equal to 1"),
    ("prepare: {min_core: lots}\n", "prepare.min_core: Input should be a valid integer"),
    ("prepare: {label_threshold: 99}\n", "prepare.label_threshold: Input should be less than or equal to 5"),
    ("prepare: {seed: 99999999999999999999}\n", "prepare.seed: Input should be less than 4294967296"),
    ("profile: {seed: -1}\n", "profile.seed: seed -1 outside [0, 2**32)"),
    ("downstream: {seeds: [0, 4294967296]}\n", "downstream.seeds: seed 4294967296 outside"),
    ("profile: {profiles: [{name: user_id, context: x, codebook_size: 4}]}\n", "'user_id' is reserved"),
    ("profile: {profiles: [{name: dist_hobby, context: x, codebook_size: 4}]}\n", "'dist_hobby' is reserved"),
    ("profile: {profiles: [{name: ../x, context: x, codebook_size: 4}]}\n", "profile.profiles.0.name: String should match pattern"),
    ("profile: {profiles: [{name: a, context: x, codebook_size: 4}, {name: a, context: y, codebook_size: 3}]}\n",
     "name 'a' is used twice"),
    ("prepare: {max_users: 3}\n", "codebook_size 4 is more than the 3 users (prepare.max_users)"),
    ("prepare: [1, 2\n", "c.yaml:2: invalid YAML"),
    ("- a\n- b\n", "top level must be a mapping, not list"),
])
def test_bad_config_is_one_line(tmp_path: Path, capsys, text: str, expected: str) -> None:
    path = _config(tmp_path, text)
    err = _one_line_error(capsys, ["prepare", "--config", str(path), "--out", str(tmp_path / "d")])
    assert expected in err and str(path) in err


def test_bad_flags_are_one_line(tmp_path: Path, capsys) -> None:
    err = _one_line_error(capsys, ["prepare", "--min-core", "-3", "--out", str(tmp_path / "d")])
    assert "flags: min_core: Input should be greater than or equal to 1" in err
    err = _one_line_error(capsys, ["prepare", "--label-threshold", "99", "--out", str(tmp_path / "d")])
    assert "label_threshold" in err
    err = _one_line_error(capsys, ["prepare", "--config", str(tmp_path / "none.yaml")])
    assert "config file not found" in err


def test_out_below_a_file_is_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "afile").write_text("x")
    err = _one_line_error(capsys, ["prepare", "--max-users", "20", "--out", str(tmp_path / "afile" / "d")])
    assert str(tmp_path / "afile") in err and ("Not a directory" in err or "File exists" in err)


def test_set_errors(tmp_path: Path) -> None:
    path = _config(tmp_path, "name: t\n")
    with pytest.raises(ConfigError, match=r"with --set: profile.max_epochs: Input should be"):
        load_config(path, {"profile.max_epochs": "many"})
    with pytest.raises(ConfigError, match="'name' is not a section"):
        load_config(path, {"name.x": 1})


def test_codebook_larger_than_the_data_is_refused_before_inference(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    assert cli_main(["prepare", "--max-users", "3", "--min-core", "1", "--out", str(data)]) == 0
    capsys.readouterr()
    cfg = _config(tmp_path, "name: t\n")
    err = _one_line_error(capsys, ["infer", "--config", str(cfg), "--data", str(data),
                                   "--out", str(tmp_path / "p")])
    assert "codebook_size 4 is more than the 3 users" in err and "stats.json" in err
    (data / "stats.json").write_text("{not json")
    err = _one_line_error(capsys, ["infer", "--config", str(cfg), "--data", str(data),
                                   "--out", str(tmp_path / "p")])
    assert "stats.json: not a valid stats.json" in err


@pytest.mark.slow  # each case starts the CLI in a subprocess
@pytest.mark.parametrize("argv, expected", [
    (["--set", "prepare.min_core=-3"], "prepare.min_core"),
    (["--set", "nonsense"], "--set expects KEY=VALUE"),
    (["--set", "prepare.min_core=[1"], "invalid YAML value"),
    (["--stages", "bogus"], "unknown stage 'bogus'"),
])
def test_run_refuses_before_starting_a_server(tmp_path: Path, argv: list[str], expected: str) -> None:
    started = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "userip.cli", "run", "--config",
                          str(REPO / "configs" / "tiny.yaml"), "--set", f"workdir={tmp_path}", *argv],
                         capture_output=True, text=True, env={**ENV, "PREFECT_HOME": str(tmp_path / "ph")},
                         cwd=REPO, timeout=300)
    assert res.returncode == 2 and expected in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "ph" / "prefect.db").exists()  # no server was started
    assert time.monotonic() - started < 60
