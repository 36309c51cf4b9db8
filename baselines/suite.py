"""Every baseline in one call, on its own protocol and on ours, and the tables.

Layout under ``root`` (``<workdir>/baselines`` for ``userip baselines``), each folder
published atomically by its own stage and reused when its config has not changed:

- ``tallrec/``: ``tallrec.job``; ``collm-mf/`` and ``collm/``: ``collm.job``;
- ``ours-tallrec/``, ``ours-collm/`` and ``ours-collm-mf/``: the same methods on the
  project's prepared split (``same_data``), when one is given;
- ``kar/``: ``kar.job`` (our split only: KAR has no protocol of its own here), with its text
  and vector caches in ``kar-cache/``;
- ``results/`` (or the folder the caller names: the flow stage's): ``results.json`` (every
  method's result, the config and the machine) and ``results.md`` (the tables).

The methods are the entries of ``METHODS``, one ``Method`` each (its folders, its jobs, its
rows): a new baseline is one more entry; one without an ``own`` protocol runs on our split only. A call computes the methods it is asked for and
reads back every other one whose finished output matches the config, so the tables always
list every finished method; the others are named "not run". Every folder is checked before
any work starts: one that is not empty and not an earlier output of the same stage is
refused, never replaced.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from userip.atomic import check_output_dir
from userip.baselines import collm, kar, same_data, tallrec
from userip.baselines import collm_mf as mf
from userip.baselines.config import BaselinesConfig
from userip.baselines.runs import Once, publishing
from userip.baselines.same_data import OurData, Scoring, open_data, prepared_dir
from userip.downstream.layout import WITHOUT, ReportMetrics
from userip.downstream.suite import hold_out_users, read_held_out
from userip.errors import ConfigError
from userip.profile_infer.layout import ProfileMeta

RESULTS_STAGE = "baselines-results"
PROTOCOLS = ("own", "ours")  # each method's authors' protocol; the project's split (needs ``Ours``)
CTR_MODEL = "dcn"  # the CTR model the same-data table sets the LLM baselines beside
OwnRow = tuple[str, str, str, dict[str, float]]  # method, protocol, LM, test metrics


@dataclass(frozen=True)
class Own:
    """A baseline's run on its authors' protocol and data."""

    run: Callable[[BaselinesConfig, Path], Once[Any]]
    """The run, from the config and the root."""
    rows: Callable[[dict[str, Any], dict[str, Any]], list[OwnRow]]
    """results.md rows of a finished run: (its result, its config section) as JSON."""


@dataclass(frozen=True)
class Method:
    """One baseline as the suite runs it."""

    folders: dict[str, str]
    """Its output folders under the root and the stage owning each."""
    own: Own | None
    """Its run on its authors' protocol; None: it runs on our split only."""
    published: list[tuple[str, float]]
    """The published test AUCs set beside ours (the papers' models, protocols and sizes)."""
    ours: Callable[[BaselinesConfig, Path, OurData], Once[Any]]
    """Its run on our split; the result has ``models`` as ``same_data.OursResult`` does."""
    serve: Callable[[BaselinesConfig, Path, OurData, int], Scoring | None]
    """``bench/serve.py``'s scorer of a finished ``ours`` run over the first n test rows."""
    serves_with_lm: bool = True
    """Its serving runs the LM on every request (the bench times a few rows, ``--lm-rows``);
    False: precomputed vectors into a CTR model, timed on ``--instances`` rows as DCN is."""


def _tallrec_rows(r: dict[str, Any], c: dict[str, Any]) -> list[OwnRow]:
    return [(f"TALLRec K={r['shots']}", "TALLRec ML-100K", c["model"], r["test"])]


def _collm_rows(r: dict[str, Any], c: dict[str, Any]) -> list[OwnRow]:
    return [(name, "CoLLM ML-1M" + ("" if part == "all" else f", {part}"), lm, r[key][part])
            for name, key, lm in (("MF", "test_mf", "-"), ("CoLLM stage 1 (text only)", "test_text", c["model"]),
                                  ("CoLLM-MF", "test", c["model"]))
            for part in ("all", "warm", "cold")]


METHODS: dict[str, Method] = {
    "tallrec": Method(
        folders={"tallrec": tallrec.STAGE, "ours-tallrec": same_data.STAGES["tallrec"]},
        own=Own(lambda cfg, root: tallrec.job(cfg.tallrec, root / "tallrec"), _tallrec_rows),
        published=[("TALLRec K=16 (LLaMA-7B), Bao et al. 2023", 0.6724),
                   ("TALLRec K=64 (LLaMA-7B)", 0.6748),
                   ("TALLRec K=256 (LLaMA-7B)", 0.7198)],
        ours=lambda cfg, root, data: same_data.tallrec_job(cfg.tallrec, cfg.same_data, data, root / "ours-tallrec"),
        serve=lambda cfg, root, data, n: same_data.tallrec_scorer(cfg.tallrec, cfg.same_data, data,
                                                                  root / "ours-tallrec", n)),
    "collm": Method(
        folders={"collm-mf": mf.STAGE, "collm": collm.STAGE, "ours-collm-mf": mf.STAGE,
                 "ours-collm": same_data.STAGES["collm"]},
        own=Own(lambda cfg, root: collm.job(cfg.collm, root / "collm", root / "collm-mf"), _collm_rows),
        published=[("MF, CoLLM Table II (ML-1M)", 0.6482),
                   ("DIN, CoLLM Table II", 0.7166),
                   ("TALLRec, CoLLM Table II (Vicuna-7B)", 0.7097),
                   ("CoLLM-MF, CoLLM Table II (Vicuna-7B)", 0.7295)],
        ours=lambda cfg, root, data: same_data.collm_job(cfg.collm, cfg.same_data, data, root / "ours-collm",
                                                         root / "ours-collm-mf"),
        serve=lambda cfg, root, data, n: same_data.collm_scorer(cfg.collm, cfg.same_data, data, root / "ours-collm",
                                                                root / "ours-collm-mf", n)),
    "kar": Method(
        folders={"kar": kar.STAGE},
        own=None,
        published=[("DCN, UserIP Table 5 (industrial ads data)", 0.76394),
                   ("KAR + DCN, UserIP Table 5", 0.78663)],
        ours=lambda cfg, root, data: kar.job(cfg.kar, data, root / "kar", root / "kar-cache"),
        serve=lambda cfg, root, data, n: kar.scorer(cfg.kar, data, root / "kar", root / "kar-cache", n),
        serves_with_lm=False),
}


@dataclass(frozen=True)
class Ours:
    """Our split for the same-data table, and the finished downstream run beside it."""

    data: OurData
    run_dir: Path | None  # a finished `userip run`'s downstream folder (its report's metrics.json)


def our_split(data_dir: Path, run_dir: Path | None, new_user_share: float, new_user_seed: int) -> Ours:
    """Our split with the users held out of training: those of ``run_dir``'s new-users
    protocol when a run is given (none when it had the protocol off), else the same seeded
    draw the downstream stage makes with these settings."""
    data_dir = prepared_dir(data_dir)
    if run_dir is not None:
        held = read_held_out(Path(run_dir))
        users = np.array([] if held is None else held.users, dtype=object)
    elif new_user_share > 0:
        users = hold_out_users(data_dir, new_user_share, new_user_seed)
    else:
        users = np.array([], dtype=object)
    return Ours(open_data(data_dir, users), None if run_dir is None else Path(run_dir))


def folders(root: Path) -> dict[str, tuple[Path, str]]:
    """Each output folder under ``root`` and the stage that owns it."""
    found = {name: (root / name, stage) for m in METHODS.values() for name, stage in m.folders.items()}
    return {**found, "results": (root / "results", RESULTS_STAGE)}


def _chosen(text: str | None, choices: Sequence[str], flag: str, what: str) -> tuple[str, ...]:
    """A comma-separated choice of ``choices`` (all when None), in their order."""
    if text is None:
        return tuple(choices)
    asked = [m.strip() for m in text.split(",") if m.strip()]
    unknown = sorted(set(asked) - set(choices))
    if unknown or not asked:
        raise ConfigError(f"{flag} {text!r}: unknown {what} {unknown[0] if unknown else '(none)'!r}; "
                          f"choose from {', '.join(choices)}")
    return tuple(m for m in choices if m in asked)


def parse_only(only: str | None, on_ours: bool) -> tuple[str, ...]:
    """``--only a,b`` as method names, in ``METHODS`` order; when None, every method that can
    run (one without an own protocol only ``on_ours``: when our split is given and asked for).
    A method asked for that cannot run is refused."""
    runnable = tuple(name for name, m in METHODS.items() if on_ours or m.own is not None)
    if only is None:
        return runnable
    asked = _chosen(only, tuple(METHODS), "--only", "method")
    idle = [m for m in asked if m not in runnable]
    if idle:
        raise ConfigError(f"--only {only!r}: {', '.join(idle)} runs only on the project's split: "
                          "give --data (a prepared data dir, `userip prepare`'s output) with the ours protocol")
    return asked


def parse_protocols(protocols: str | None) -> tuple[str, ...]:
    """``--protocols own,ours`` in ``PROTOCOLS`` order; both when None."""
    return _chosen(protocols, PROTOCOLS, "--protocols", "protocol")


def _outcome(job: Once[Any], asked: bool) -> dict[str, Any] | None:
    """An asked job's result, computed or read back, with its wall time; another's only when
    it has finished with these settings (None otherwise)."""
    t0 = time.perf_counter()
    result = job.run() if asked else job.finished()
    if result is None:
        return None
    return {"result": asdict(result), "wall_seconds": round(time.perf_counter() - t0, 2) if asked else None}


def _outcomes(jobs: dict[str, Once[Any]], methods: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    done = {name: _outcome(job, name in methods) for name, job in jobs.items()}
    return {k: v for k, v in done.items() if v is not None}, [k for k, v in done.items() if v is None]


def run_all(cfg: BaselinesConfig, root: Path, methods: Sequence[str] = tuple(METHODS),
            ours: Ours | None = None, results_dir: Path | None = None,
            serving: dict[str, Any] | None = None, protocols: Sequence[str] = PROTOCOLS) -> dict[str, Any]:
    """Run ``methods`` (finished ones are reused) on their own protocols, and on ``ours`` when
    given (``protocols`` may leave either out); read back every other finished method;
    publish ``results_dir`` (default ``root/results``). ``serving``: what ``bench/serve.py``
    printed, for the serving column. Returns what ``results.json`` holds."""
    root = Path(root)
    results = Path(results_dir) if results_dir is not None else root / "results"
    checks = [*folders(root).values(), (results, RESULTS_STAGE)]
    for path, stage in checks:  # refuse a foreign folder before any work
        check_output_dir(path, stage)
    ctr = ctr_rows(ours.run_dir) if ours is not None and ours.run_dir is not None else []  # read before any work
    asked = {p: methods if p in protocols else () for p in PROTOCOLS}
    own, not_run = _outcomes({name: m.own.run(cfg, root) for name, m in METHODS.items() if m.own is not None},
                             asked["own"])
    record: dict[str, Any] = {"machine": machine(), "config": cfg.model_dump(mode="json"), "methods": own,
                              "not_run": not_run, "same_data": None}
    if ours is not None:
        done, missing = _outcomes({name: m.ours(cfg, root, ours.data) for name, m in METHODS.items()},
                                  asked["ours"])
        record["same_data"] = {
            "data_dir": str(ours.data.data_dir), "run_dir": None if ours.run_dir is None else str(ours.run_dir),
            "held_out_users": len(ours.data.held_out), "methods": done, "not_run": missing,
            "ctr": ctr, "serving": serving}
    with publishing(results, RESULTS_STAGE) as tmp:
        (tmp / "results.json").write_text(json.dumps(record, indent=2))
        (tmp / "results.md").write_text(table(record))
    return record


def ctr_rows(run_dir: Path) -> list[dict[str, Any]]:
    """DCN without and with the run's primary codes, from a finished run's report
    (``metrics.json``): test metrics (mean over seeds, every test row) and the new-users
    protocol's AUC."""
    report = ReportMetrics.read(Path(run_dir))
    paper = report.models.get(CTR_MODEL, {})
    new = report.new_users.models.get(CTR_MODEL, {}) if report.new_users else {}
    tokens = {WITHOUT: 0, report.primary_codes: _profile_tokens(report.variants.get(report.primary_codes, {}))}
    rows = []
    for variant, name, key in ((WITHOUT, "DCN", "dcn"),
                               (report.primary_codes, f"DCN + {report.primary_codes} codes", "dcn_codes")):
        if variant in paper:
            s = paper[variant]
            rows.append({"name": name, "serving_key": key, "seeds": s.n_seeds, "lm_tokens": tokens[variant],
                         "test": {"auc": s.auc, "logloss": s.logloss, "uauc": s.uauc, "n": s.n_rows},
                         "new_users": None if variant not in new else {"auc": new[variant].auc,
                                                                        "n": new[variant].n_rows}})
    return rows


def _profile_tokens(variant_meta: dict[str, Any]) -> int | None:
    """The LM tokens of the profile run behind a variant's codes (its meta.json
    ``lm_tokens``); None when that profile is gone or predates the count."""
    source = variant_meta.get("source_profile")
    if not source or not ProfileMeta.path(Path(source)).is_file():
        return None
    counted = ProfileMeta.read(Path(source)).lm_tokens
    return None if counted is None else counted["train"] + counted["eval"]


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _own_line(row: OwnRow) -> str:
    method, protocol, lm, ours = row
    return f"| {method} | {protocol} | {lm} | {ours['auc']:.4f} | {ours['uauc']:.4f} | {ours['n']} |"


def _num(x: float | None, fmt: str = ".4f") -> str:
    return "—" if x is None else format(x, fmt)


def _same_line(name: str, test: dict[str, Any] | None, new: dict[str, Any] | None, tokens: int | None,
               serving: float | None) -> str:
    t = test or {}
    rows = str(t.get("n", "—")) + ("" if new is None else f" ({new['n']})")
    return (f"| {name} | {_num(t.get('auc'))} | {_num(t.get('logloss'))} | {_num(t.get('uauc'))} "
            f"| {_num(None if new is None else new['auc'])} | {rows} | {_num(tokens, ',')} "
            f"| {_num(serving, '.3f' if serving is not None and serving < 10 else ',.0f')} |")


def same_data_table(same: dict[str, Any]) -> list[str]:
    """The one table on our split: DCN and DCN + codes from the run's report, then every
    finished method's models on the drawn test rows."""
    per_10k = (same["serving"] or {}).get("per_10k_s", {})
    lines = ["## Same data as UserIP: the project's split and its new-users protocol", "",
             f"Data `{same['data_dir']}`; {same['held_out_users']} users held out of training (new users).", "",
             "| model | AUC | Logloss | UAUC | new-user AUC | test rows (new-user rows) | LM tokens offline "
             "| serving s / 10k |", "|---|---|---|---|---|---|---|---|"]
    for row in same["ctr"]:
        lines.append(_same_line(f"{row['name']} ({row['seeds']} seeds)", row["test"], row["new_users"],
                                row.get("lm_tokens"),
                                per_10k.get(row["serving_key"])))
    for method, outcome in same["methods"].items():
        for k, (name, m) in enumerate(outcome["result"]["models"].items()):
            lines.append(_same_line(name, m["test"], m["new_users"], m["lm_tokens"],
                                    per_10k.get(method) if k == 0 else None))
    lines += ["", "DCN rows: mean over seeds on every test row (new users: the new-users protocol's fits), "
              "read from the run's report" + (f" (`{same['run_dir']}`)" if same["run_dir"] else
                                              " (none given: no DCN rows)") + "; LLM rows: the drawn test rows "
              "(AUC, Logloss, UAUC: the all-users draw; new-user AUC: the held-out users' drawn rows), "
              "but KAR's: every test row, mean over its seeds, its DCN fitted beside it on the same rows "
              "and seeds. "
              "LM tokens offline: every token the method ran through the LM (training, validation and "
              "test scoring; KAR: its prompts, generated texts and encoded texts); DCN + codes: the "
              "profile stage's (its meta.json `lm_tokens`, training and evaluation; — for a profile "
              "from before it counted). Serving: seconds per "
              "10,000 instances from `bench/serve.py --baselines`"
              + ("" if same["serving"] else " (not given: —)") + "."]
    if same["not_run"]:
        lines += ["", "Not run on this split with these settings: " + ", ".join(same["not_run"]) + "."]
    return lines


def table(record: dict[str, Any]) -> str:
    """results.md: our test figures on each method's own protocol and the papers' beside
    them, then the same-data table when there is one."""
    lines = ["| method | protocol | LM | test AUC | UAUC | test rows |", "|---|---|---|---|---|---|"]
    cfg, methods = record["config"], record["methods"]
    for name, outcome in methods.items():
        own = METHODS[name].own
        assert own is not None  # only methods with an own protocol have an own outcome
        lines += [_own_line(r) for r in own.rows(outcome["result"], cfg[name])]
    if record["not_run"]:
        lines += ["", "Not run with these settings (no finished output): " + ", ".join(record["not_run"]) + "."]
    lines += ["", "Published test AUC (their models and full data):", "", "| source | AUC |", "|---|---|"]
    tabulated = {*methods, *(record["same_data"] or {}).get("methods", {})}
    for name in (m for m in METHODS if m in tabulated):
        lines += [f"| {source} | {auc:.4f} |" for source, auc in METHODS[name].published]
    if record["same_data"] is not None:
        lines += ["", *same_data_table(record["same_data"])]
    m = record["machine"]
    walls = [(k, v["wall_seconds"]) for k, v in methods.items() if v["wall_seconds"] is not None]
    if record["same_data"] is not None:
        walls += [(f"{k} (our split)", v["wall_seconds"]) for k, v in record["same_data"]["methods"].items()
                  if v["wall_seconds"] is not None]
    lines += ["", f"Machine: {m['platform']}, {m['cpus']} CPUs, {m['torch_threads']} torch threads, "
              f"GPU {m['cuda'] or 'none'}; wall time of this call: "
              + (", ".join(f"{k} {w:.0f} s" for k, w in walls) or "none (everything read back)")
              + " (a reused output takes ~0 s; methods not asked for are read back as they were)."]
    return "\n".join(lines) + "\n"
