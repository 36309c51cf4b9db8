"""``userip report``: paper-style tables, plots and a profile probe from a finished run.

Reads ``<run>/downstream/<variant>/<model>/seed=<s>/metrics.json`` (see the package
docstring) and writes ``<run>/report.md``, ``<run>/metrics.json`` and
``<run>/fig6_auc_vs_codebook_size.png``, ``<run>/fig7_logloss_vs_codebook_size.png``.

Statistics: mean ± sample std over seeds; the p-value is a two-sided paired t-test
(scipy ``ttest_rel``) of test AUC with codes against without, paired by seed.
R.I. follows the paper's Eqs. 8 and 9 against the same model without codes.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from downstream.features import load_users, open_codes
from downstream.profile_evidence import profile_evidence
from downstream.metrics import paired_p_value, ri_auc, ri_logloss
from downstream.suite import VARIANT_JSON, WITHOUT, source_of, trained_dirs
from userip.config import DownstreamConfig
from userip.errors import InputError

ABLATION_METHODS = ("userip", "kmeans", "agglomerative", "none")
PROBE_SEED = 0
PROBE_TEST_SHARE = 0.3


def collect(run_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for d in trained_dirs(run_dir):
        path = d / "metrics.json"
        if not path.is_file():
            raise InputError("model not evaluated yet; run `userip evaluate` first", path=str(d))
        rows.append(json.loads(path.read_text()))
    return rows


def aggregate(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """{model: {variant: summary}}; codes variants are compared with ``without`` by seed."""
    by = defaultdict(dict)
    for r in rows:
        by[(r["model"], r["variant"])][r["seed"]] = r
    out: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for (model, variant), seeds in sorted(by.items()):
        order = sorted(seeds)
        auc = np.array([seeds[s]["auc"] for s in order])
        ll = np.array([seeds[s]["logloss"] for s in order])
        summary: dict[str, Any] = {
            "auc": float(auc.mean()), "auc_std": float(auc.std(ddof=1)) if len(auc) > 1 else 0.0,
            "logloss": float(ll.mean()), "logloss_std": float(ll.std(ddof=1)) if len(ll) > 1 else 0.0,
            "uauc": float(np.nanmean([seeds[s]["uauc"] for s in order])),
            "n_seeds": len(order), "seeds": order,
            "best_epochs": [seeds[s]["best_epoch"] for s in order],
            "p_value": None, "ri_auc": None, "ri_logloss": None,
        }
        base = by.get((model, WITHOUT))
        if variant != WITHOUT and base:
            common = [s for s in order if s in base]
            summary["p_value"] = paired_p_value([seeds[s]["auc"] for s in common],
                                                [base[s]["auc"] for s in common])
            b_auc = float(np.mean([base[s]["auc"] for s in common])) if common else None
            b_ll = float(np.mean([base[s]["logloss"] for s in common])) if common else None
            if common:
                summary["ri_auc"] = ri_auc(float(np.mean([seeds[s]["auc"] for s in common])), b_auc)
                summary["ri_logloss"] = ri_logloss(float(np.mean([seeds[s]["logloss"] for s in common])), b_ll)
        out[model][variant] = summary
    return dict(out)


def _fmt(s: dict[str, Any] | None, key: str) -> str:
    if s is None:
        return "—"
    return f"{s[key]:.4f} ± {s[key + '_std']:.4f}"


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:+.2f}%"


def _uauc(s: dict[str, Any] | None) -> str:
    return "—" if s is None else f"{s['uauc']:.4f}"


def _p(x: float | None) -> str:
    return "—" if x is None else f"{x:.3g}"


def _compare_table(models: list[str], variant: str, agg: dict) -> list[str]:
    lines = ["| model | AUC without | AUC with | Logloss without | Logloss with | UAUC with | "
             "R.I. AUC | R.I. Logloss | p (AUC) | seeds |", "|" + "---|" * 10]
    for m in models:
        base, cur = agg.get(m, {}).get(WITHOUT), agg.get(m, {}).get(variant)
        if base is None and cur is None:
            continue
        lines.append(f"| {m} | {_fmt(base, 'auc')} | {_fmt(cur, 'auc')} | {_fmt(base, 'logloss')} | "
                     f"{_fmt(cur, 'logloss')} | {_uauc(cur)} | "
                     f"{_pct(cur and cur['ri_auc'])} | {_pct(cur and cur['ri_logloss'])} | "
                     f"{_p(cur and cur['p_value'])} | {(cur or base)['n_seeds']} |")
    return lines


def _sizes(meta: dict[str, Any]) -> str:
    if meta.get("kind") == "dense":
        return "dense (no codes)"
    return "/".join(str(p["K"]) for p in meta.get("profiles", [])) or "—"


def probe(data_dir: Path, run_dir: Path, metas: dict[str, dict]) -> dict[str, dict[str, Any]]:
    """How well each codes variant predicts held-out user attributes: multinomial logistic
    regression on one-hot codes, users split 70/30 (seeded), accuracy vs the majority class
    of the training users."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import OneHotEncoder

    users = load_users(Path(data_dir))
    if users is None:
        return {}
    targets = {}
    if "occupation" in users.columns:
        targets["occupation"] = users["occupation"].cast(pl.String).to_numpy()
    if "gender" in users.columns:
        targets["gender"] = users["gender"].cast(pl.String).to_numpy()
    if "age" in users.columns:
        age = users["age"]
        # ML-100K ages are years: band them as ML-1M does; ML-1M ages are already bands
        targets["age_band"] = (np.digitize(age.to_numpy(), [18, 25, 35, 45, 50, 56]).astype(str)
                               if age.dtype.is_numeric() and age.max() > 56 else age.cast(pl.String).to_numpy())
    out: dict[str, dict[str, Any]] = {}
    uid = users["user_id"].to_numpy()
    for variant, meta in metas.items():
        if meta.get("kind") != "codes":
            continue
        record = next((json.loads((d / "model.json").read_text()) for d in trained_dirs(run_dir)
                       if d.parts[-3] == variant), None)
        if record is None:
            continue
        path, is_bank, version = source_of(record, None)
        codes = open_codes(Path(path), bank=is_bank, version=version).lookup(uid)
        x = OneHotEncoder(handle_unknown="ignore").fit_transform(codes)
        res = {}
        for name, y in targets.items():
            keep = np.array([v is not None and v != "None" for v in y])
            xi, yi = x[keep], y[keep]
            tr, te = train_test_split(np.arange(len(yi)), test_size=PROBE_TEST_SHARE, random_state=PROBE_SEED)
            values, counts = np.unique(yi[tr], return_counts=True)
            majority = float(np.mean(yi[te] == values[counts.argmax()]))
            clf = LogisticRegression(max_iter=500).fit(xi[tr], yi[tr])
            res[name] = {"accuracy": float(clf.score(xi[te], yi[te])), "majority": majority,
                         "classes": int(len(values)), "test_users": int(len(te))}
        out[variant] = res
    return out


def _plot(series: dict[str, list[tuple[int, str, dict]]], key: str, path: Path, title: str) -> None:
    """One line per swept profile: test ``key`` against that profile's codebook size."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, points in series.items():
        points = sorted(points)
        ax.errorbar([p[0] for p in points], [p[2][key] for p in points],
                    yerr=[p[2][key + "_std"] for p in points], marker="o", capsize=3, label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("codebook size K of the swept profile")
    ax.set_ylabel(f"test {key} (mean ± std over seeds)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sweep_series(metas: dict[str, dict], results: dict[str, dict]) -> dict[str, list[tuple[int, str, dict]]]:
    """Per swept profile, ``(K, variant, metrics)`` points: the sweep's k-means variants plus
    the plain k-means variant at the profile's default K (the same method, one more size)."""
    series: dict[str, list[tuple[int, str, dict]]] = {}
    for v, meta in metas.items():
        swept = meta.get("sweep")
        if swept and v in results:
            series.setdefault(swept["profile"], []).append((swept["K"], v, results[v]))
    base = metas.get("kmeans")
    if base and "kmeans" in results:
        for profile in base["profiles"]:
            points = series.get(profile["name"])
            if points is not None and all(k != profile["K"] for k, _, _ in points):
                points.append((profile["K"], "kmeans", results["kmeans"]))
    return {name: pts for name, pts in sorted(series.items()) if len(pts) >= 2}


def write_report(run_dir: Path, data_dir: Path, section: DownstreamConfig) -> dict[str, Any]:
    run_dir = Path(run_dir)
    agg = aggregate(collect(run_dir))
    metas = {p.parent.name: json.loads(p.read_text())
             for p in sorted((run_dir / "downstream").glob(f"*/{VARIANT_JSON}"))}
    notes = sorted({f"{v}: {m['note']}" for v, m in metas.items() if m.get("note")})
    primary = section.primary_codes
    md = ["# Downstream CTR report", "", f"Run dir: `{run_dir}`; data: `{data_dir}`.", ""]
    if notes:
        md += ["> **Codes provenance.** " + " ".join(f"`{n}`" for n in notes), ""]
    md += ["Mean ± std over seeds of test metrics; the epoch was picked on validation AUC only. "
           "R.I. per paper Eqs. 8–9 against the same model without codes; p: two-sided paired "
           "t-test (scipy `ttest_rel`) of test AUC over seeds.", ""]
    md += [f"## Table 2 analogue: every model, with and without `{primary}` codes", ""]
    md += _compare_table(sorted(m for m in agg if m in set(section.models) | set(section.transfer_models)
                                or primary in agg[m]), primary, agg) + [""]
    transfer = list(dict.fromkeys([*section.ablation_models, *section.transfer_models]))
    md += [f"## Table 3: `{primary}` codes (trained with the DCN surrogate) transferred to other models", ""]
    md += _compare_table(transfer, primary, agg) + [""]
    md += ["## Table 4: quantization ablation", "",
           "| model | variant | method | K per profile | AUC | Logloss | UAUC | R.I. AUC | p (AUC) |",
           "|" + "---|" * 9]
    for m in section.ablation_models:
        for v in [WITHOUT, *[v for v in metas if metas[v].get("method") in ABLATION_METHODS and v == metas[v]["method"]]]:
            s = agg.get(m, {}).get(v)
            if s:
                md.append(f"| {m} | {v} | {metas.get(v, {}).get('method', v)} | {_sizes(metas.get(v, {}))} | "
                          f"{_fmt(s, 'auc')} | {_fmt(s, 'logloss')} | {s['uauc']:.4f} | {_pct(s['ri_auc'])} | {_p(s['p_value'])} |")
    md.append("")
    figs = []
    for m in section.ablation_models[:1]:
        series = sweep_series(metas, agg.get(m, {}))
        if series:
            for key, fig_no in (("auc", 6), ("logloss", 7)):
                path = run_dir / f"fig{fig_no}_{key}_vs_codebook_size.png"
                _plot(series, key, path, f"Fig. {fig_no} analogue: {m}, FAISS k-means codes on the final θ")
                figs.append(path.name)
    md += ["## Figs 6–7 analogues: AUC / Logloss against codebook size", ""]
    md += [f"![{f}]({f})" for f in figs] or ["(needs a quantize sweep: at least two codebook sizes of one profile)"]
    md.append("")
    evidence_md, evidence = profile_evidence(metas)
    md += evidence_md
    probes = probe(data_dir, run_dir, metas)
    md += ["## Profile probe: do codes predict held-out user attributes?", "",
           f"Logistic regression on one-hot codes; {int(100 * (1 - PROBE_TEST_SHARE))}/"
           f"{int(100 * PROBE_TEST_SHARE)} user split (seed {PROBE_SEED}); accuracy vs always "
           "predicting the training users' majority class. A large gap on gender or age is also "
           "a fairness flag: the codes encode a protected attribute.", "",
           "| variant | attribute | accuracy | majority | classes | test users |", "|---|---|---|---|---|---|"]
    for v, res in probes.items():
        for attr, r in res.items():
            md.append(f"| {v} | {attr} | {r['accuracy']:.3f} | {r['majority']:.3f} | {r['classes']} | {r['test_users']} |")
    md.append("")
    metrics = {"models": agg, "variants": metas, "probe": probes, "evidence": evidence, "notes": notes,
               "primary_codes": primary, "figures": figs}
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (run_dir / "report.md").write_text("\n".join(md))
    return metrics
