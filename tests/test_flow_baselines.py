"""The optional baselines stage of the `userip` flow, run for real: `userip run` on the tiny
config with a `baselines:` section against a real Prefect server runs every method (tiny
random Llama; KAR's texts by SmolLM2, as the tiny LM writes only newlines) on its own
protocol (KAR has none) and on the run's split after the report, beside the run's DCN; the rerun finds every stage cached. Without the section the stage is not
planned at all."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.prefect_stack import BIN, REPO, client_env
from userip.config import load_config
from userip.flows.userip_flow import BASELINES, FULL, stage_table


def test_the_stage_is_planned_only_with_a_baselines_section() -> None:
    assert stage_table(load_config("configs/demo.yaml")) == FULL
    assert stage_table(load_config("configs/tiny.yaml", {"baselines": {}})) == (*FULL, BASELINES)


@pytest.mark.slow
def test_userip_run_runs_the_baselines_after_the_report_and_caches_them(prefect_api: str, tiny,
                                                                        tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    baselines = {
        "tallrec": {"model": str(tiny), "device": "cpu", "shots": 4, "epochs": 1, "batch_size": 4,
                    "valid_samples": 8, "test_samples": 8, "eval_batch_size": 8},
        "collm": {"model": str(tiny), "device": "cpu", "train_samples": 16, "valid_samples": 16,
                  "test_samples": 24, "history": 3, "mapper_epochs": 2, "batch_size": 8, "eval_batch_size": 12,
                  "mf": {"dims": [8], "lrs": [0.01], "weight_decays": [1e-7], "epochs": 2}},
        "kar": {"device": "cpu", "users": 6, "items": 8, "history": 3, "max_new_tokens": 4, "gen_batch_size": 4,
                "chunk_rows": 4, "seeds": [0, 1], "ctr": {"epochs": 3, "patience": 1}, "experts": {"hidden": [8]}},
        "same_data": {"test_samples": 16, "new_user_samples": 4}}
    cmd = [str(BIN / "userip"), "run", "--config", "configs/tiny.yaml", "--set", f"workdir={workdir}",
           "--set", f"baselines={json.dumps(baselines)}"]
    env = client_env(prefect_api, tmp_path / "prefect")
    first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=2400)
    out = first.stdout + first.stderr
    assert first.returncode == 0, out[-4000:]
    # the eight stage tasks (prepare ... report, the one model's train, baselines) ran
    assert out.count("prefect.task_runs: Finished in state Completed()") == 8, out[-4000:]
    (results,) = (workdir / "baselines" / "flow").iterdir()
    record = json.loads((results / "results.json").read_text())
    assert list(record["methods"]) == ["tallrec", "collm"] and record["not_run"] == []
    same = record["same_data"]
    assert list(same["methods"]) == ["tallrec", "collm", "kar"] and same["not_run"] == []
    assert same["methods"]["kar"]["result"]["held_out_users"] == same["held_out_users"]
    (run_dir,) = (workdir / "downstream").iterdir()
    report = json.loads((run_dir / "metrics.json").read_text())
    held = json.loads((run_dir / "downstream" / "new-users" / "held_out.json").read_text())
    assert same["held_out_users"] == len(held["users"]) > 0
    assert [r["name"] for r in same["ctr"]] == ["DCN", "DCN + userip codes"]
    assert same["ctr"][0]["test"]["auc"] == report["models"]["dcn"]["without"]["auc"]
    assert same["ctr"][1]["new_users"]["auc"] == report["new_users"]["models"]["dcn"]["userip"]["auc"]
    (profile,) = (workdir / "infer").iterdir()  # the codes' offline cost: the profile stage's tokens
    counted = json.loads((profile / "meta.json").read_text())["lm_tokens"]
    assert same["ctr"][0]["lm_tokens"] == 0 and same["ctr"][1]["lm_tokens"] == sum(counted.values()) > 0
    table = (results / "results.md").read_text()
    assert "| DCN (2 seeds) |" in table and "| TALLRec K=4 |" in table and "| CoLLM-MF |" in table
    assert "| KAR + DCN (2 seeds) |" in table and "| KAR + DCN, UserIP Table 5 | 0.7866 |" in table
    assert (workdir / "baselines" / "ours-collm" / "adapter" / "adapter_config.json").is_file()
    written = (results / "results.json").stat().st_mtime_ns

    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    out = second.stdout + second.stderr
    assert second.returncode == 0, out[-4000:]
    assert "prefect.task_runs: Finished in state Completed()" not in out, out[-4000:]
    assert out.count("prefect.task_runs: Finished in state Cached") == 8, out[-4000:]
    assert (results / "results.json").stat().st_mtime_ns == written
    assert [p.name for p in (workdir / "baselines" / "flow").iterdir()] == [results.name]
