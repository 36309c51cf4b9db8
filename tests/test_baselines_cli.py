"""`userip baselines`: bad settings are one line and exit 2 before any work; a tiny TALLRec
run publishes results.json / results.md beside the published figures and is reused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from userip.cli import main as cli_main


def _config(tmp_path: Path, baselines: str) -> Path:
    path = tmp_path / "b.yaml"
    path.write_text(f"workdir: {tmp_path / 'run'}\nbaselines:\n{baselines}")
    return path


def _one_line_error(capsys, argv: list[str]) -> str:
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("baselines, only, expected", [
    ("  collm: {train_samples: 0}\n", None, "baselines.collm.train_samples: Input should be greater than or equal to 1"),
    ("  knn: {}\n", None, "baselines.knn: Extra inputs are not permitted"),
    ("  tallrec: {shots: 9000}\n", "tallrec", "tallrec: shots asks for 9000 samples; the protocol has 8000"),
    ("  kar: {users: 0}\n", "kar", "baselines.kar.users: Input should be greater than or equal to 1"),
    ("  {}\n", "tallrec,knn", "--only 'tallrec,knn': unknown method 'knn'; choose from tallrec, collm, kar"),
    ("  {}\n", "collm,kar", "--only 'collm,kar': kar runs only on the project's split: give --data"),
])
def test_bad_settings_are_one_line(tmp_path: Path, capsys, baselines: str, only: str | None, expected: str):
    argv = ["baselines", "--config", str(_config(tmp_path, baselines))] + (["--only", only] if only else [])
    assert expected in _one_line_error(capsys, argv)


@pytest.mark.parametrize("extra, expected", [
    (["--protocols", "own,theirs"], "--protocols 'own,theirs': unknown protocol 'theirs'; choose from own, ours"),
    (["--run", "somewhere"], "--run and --serving go with --data"),
    (["--data", "nowhere"], "not a prepared data dir (no interactions.parquet)"),
])
def test_bad_same_data_flags_are_one_line(tmp_path: Path, capsys, extra: list[str], expected: str):
    argv = ["baselines", "--config", str(_config(tmp_path, "  {}\n")), *extra]
    assert expected in _one_line_error(capsys, argv)


def test_a_foreign_folder_is_refused_before_any_work(tmp_path: Path, capsys):
    mine = tmp_path / "run" / "baselines" / "results"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    err = _one_line_error(capsys, ["baselines", "--config", str(_config(tmp_path, "  {}\n"))])
    assert "not empty and not an earlier 'baselines-results' output" in err
    assert not (tmp_path / "run" / "baselines" / "tallrec").exists()
    assert (mine / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_tiny_tallrec_run_writes_the_table_and_is_reused(tiny, tmp_path: Path, capsys):
    cfg = _config(tmp_path, f"  tallrec: {{model: {tiny}, device: cpu, shots: 4, epochs: 1, batch_size: 4, "
                            "valid_samples: 8, test_samples: 8, eval_batch_size: 8}\n")
    assert cli_main(["baselines", "--config", str(cfg), "--only", "tallrec"]) == 0
    results = tmp_path / "run" / "baselines" / "results"
    record = json.loads((results / "results.json").read_text())
    assert list(record["methods"]) == ["tallrec"]
    auc = record["methods"]["tallrec"]["result"]["test"]["auc"]
    table = (results / "results.md").read_text()
    assert f"| TALLRec K=4 | TALLRec ML-100K | {tiny} | {auc:.4f} |" in table
    assert "| TALLRec K=64 (LLaMA-7B) | 0.6748 |" in table and "CoLLM Table II" not in table
    assert table in capsys.readouterr().out

    adapter = tmp_path / "run" / "baselines" / "tallrec" / "adapter" / "adapter_model.safetensors"
    before = adapter.stat().st_mtime_ns
    assert cli_main(["baselines", "--config", str(cfg), "--only", "tallrec"]) == 0
    assert adapter.stat().st_mtime_ns == before  # the finished run was reused
    again = json.loads((results / "results.json").read_text())
    assert again["methods"]["tallrec"]["result"] == record["methods"]["tallrec"]["result"]
