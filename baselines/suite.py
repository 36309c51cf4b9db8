"""Every baseline's preset in one call, and the comparison table with the papers' figures.

Layout under ``root`` (``<workdir>/baselines`` for ``userip baselines``), each folder
published atomically by its own stage and reused when its config has not changed:

- ``tallrec/``: ``tallrec.run``;
- ``collm-mf/`` and ``collm/``: ``collm_mf.run`` and ``collm.run``;
- ``kar/``: ``kar.run``, with its caches (prepared data, texts, vectors) in ``kar-cache/``;
- ``results/``: ``results.json`` (every method's result and the machine) and
  ``results.md`` (the table).

Every folder is checked before any work starts: one that is not empty and not an earlier
output of the same stage is refused, never replaced.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from userip.atomic import check_output_dir
from userip.baselines import collm, kar, tallrec
from userip.baselines import collm_mf as mf
from userip.baselines.config import BaselinesConfig
from userip.baselines.runs import publishing
from userip.errors import ConfigError

METHODS = ("tallrec", "collm", "kar")
RESULTS_STAGE = "baselines-results"
# Published test AUCs beside which ours are set (the papers' models, protocols and sizes).
PUBLISHED = {
    "tallrec": [("TALLRec K=16 (LLaMA-7B), Bao et al. 2023", 0.6724),
                ("TALLRec K=64 (LLaMA-7B)", 0.6748),
                ("TALLRec K=256 (LLaMA-7B)", 0.7198)],
    "collm": [("MF, CoLLM Table II (ML-1M)", 0.6482),
              ("DIN, CoLLM Table II", 0.7166),
              ("TALLRec, CoLLM Table II (Vicuna-7B)", 0.7097),
              ("CoLLM-MF, CoLLM Table II (Vicuna-7B)", 0.7295)],
    "kar": [("DCN, UserIP Table 5 (industrial ads data)", 0.76394),
            ("KAR + DCN, UserIP Table 5", 0.78663)],
}


def folders(root: Path) -> dict[str, tuple[Path, str]]:
    """Each output folder under ``root`` and the stage that owns it."""
    return {"tallrec": (root / "tallrec", tallrec.STAGE), "collm-mf": (root / "collm-mf", mf.STAGE),
            "collm": (root / "collm", collm.STAGE), "kar": (root / "kar", kar.STAGE),
            "results": (root / "results", RESULTS_STAGE)}


def parse_only(only: str | None) -> tuple[str, ...]:
    """``--only a,b`` as method names, in ``METHODS`` order; all when None."""
    if only is None:
        return METHODS
    asked = [m.strip() for m in only.split(",") if m.strip()]
    unknown = sorted(set(asked) - set(METHODS))
    if unknown or not asked:
        raise ConfigError(f"--only {only!r}: unknown method {unknown[0] if unknown else '(none)'!r}; "
                          f"choose from {', '.join(METHODS)}")
    return tuple(m for m in METHODS if m in asked)


def run_all(cfg: BaselinesConfig, root: Path, methods: Sequence[str] = METHODS) -> dict[str, Any]:
    """Run ``methods`` (finished ones are reused), then publish ``results/``; returns what
    ``results.json`` holds."""
    dirs = folders(Path(root))
    for path, stage in dirs.values():  # refuse a foreign folder before any work
        check_output_dir(path, stage)
    results: dict[str, Any] = {}
    for method in methods:
        t0 = time.perf_counter()
        if method == "tallrec":
            result: Any = tallrec.run(cfg.tallrec, dirs["tallrec"][0])
        elif method == "collm":
            result = collm.run(cfg.collm, dirs["collm"][0], dirs["collm-mf"][0])
        else:
            result = kar.run(cfg.kar, dirs["kar"][0], Path(root) / "kar-cache")
        results[method] = {"result": asdict(result), "wall_seconds": round(time.perf_counter() - t0, 2)}
    record = {"machine": machine(), "config": cfg.model_dump(mode="json"), "methods": results}
    with publishing(dirs["results"][0], RESULTS_STAGE) as tmp:
        (tmp / "results.json").write_text(json.dumps(record, indent=2))
        (tmp / "results.md").write_text(table(record))
    return record


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _row(method: str, protocol: str, ours: dict[str, float], model: str) -> str:
    return (f"| {method} | {protocol} | {model} | {ours['auc']:.4f} | {ours['uauc']:.4f} "
            f"| {ours['n']} |")


def table(record: dict[str, Any]) -> str:
    """results.md: our test figures (rows measured in this run's outputs), then the papers'."""
    lines = ["| method | protocol | LM | test AUC | UAUC | test rows |", "|---|---|---|---|---|---|"]
    cfg, methods = record["config"], record["methods"]
    if "tallrec" in methods:
        r, c = methods["tallrec"]["result"], cfg["tallrec"]
        lines.append(_row(f"TALLRec K={r['shots']}", "TALLRec ML-100K", r["test"], c["model"]))
    if "collm" in methods:
        r, c = methods["collm"]["result"], cfg["collm"]
        for name, key, lm in (("MF", "test_mf", "-"), ("CoLLM stage 1 (text only)", "test_text", c["model"]),
                              ("CoLLM-MF", "test", c["model"])):
            for part in ("all", "warm", "cold"):
                protocol = "CoLLM ML-1M" + ("" if part == "all" else f", {part}")
                lines.append(_row(name, protocol, r[key][part], lm))
    if "kar" in methods:
        r, c = methods["kar"]["result"], cfg["kar"]
        for name, key, lm in (("DCN", "dcn", "-"), ("KAR + DCN", "kar", c["model"])):
            for part, protocol in (("all", "ours ML-100K, new-users protocol"), ("new", "ours, new users' rows"),
                                   ("new_text", "ours, rows of new users with a text")):
                if part in r["test"][key]:  # no new users' rows when none are held out
                    lines.append(_row(name, protocol, r["test"][key][part], lm))
    lines += ["", "Published test AUC (their models and full data):", "",
              "| source | AUC |", "|---|---|"]
    for method in methods:
        lines += [f"| {name} | {auc:.4f} |" for name, auc in PUBLISHED[method]]
    m = record["machine"]
    walls = ", ".join(f"{k} {v['wall_seconds']:.0f} s" for k, v in methods.items())
    lines += ["", f"Machine: {m['platform']}, {m['cpus']} CPUs, {m['torch_threads']} torch threads, "
              f"GPU {m['cuda'] or 'none'}; wall time of this call: {walls} (a reused output takes ~0 s)."]
    return "\n".join(lines) + "\n"
