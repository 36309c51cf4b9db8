"""``userip report``: paper-style tables, plots and a profile probe from a finished run.

Reads ``<run>/downstream/<variant>/<model>/seed=<s>/metrics.json`` (see the package
docstring) and writes ``<run>/report.md``, ``<run>/metrics.json`` and
``<run>/fig6_auc_vs_codebook_size.png``, ``<run>/fig7_logloss_vs_codebook_size.png``.

Statistics: mean ± sample std over seeds; the p-value is a two-sided paired t-test
(scipy ``ttest_rel``) of test AUC with codes against without, paired by seed.
R.I. follows the paper's Eqs. 8 and 9 against the same model without codes.

Sections: the paper protocol's Tables 2-4 and Figs 6-7; "New users" (the new-users
protocol, ``downstream.suite``); "AUC by user activity" (both protocols); "Target leakage"
(stat codes from the full against the first-half train history, when fitted); "Epoch
selection"; the profile probe.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from downstream.features import load_users, open_codes
from downstream.metrics import ACTIVITY_BUCKETS, paired_p_value, ri_auc, ri_logloss
from downstream.profile_evidence import profile_evidence
from downstream.suite import (
    NEW_USERS,
    PAPER,
    STAT_PREFIX,
    SWEEP_PREFIX,
    VARIANT_JSON,
    WITHOUT,
    read_held_out,
    source_of,
    trained_dirs,
)
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
            "n_seeds": len(order), "seeds": order, "aucs": auc.tolist(),
            "best_epochs": [seeds[s]["best_epoch"] for s in order],
            "epochs_run": [seeds[s].get("epochs_run") for s in order],
            "epoch_cap": seeds[order[0]].get("epoch_cap"), "n_rows": seeds[order[0]]["n"],
            "by_activity": _activity_summary([seeds[s] for s in order]),
            "p_value": None, "ri_auc": None, "ri_logloss": None, "auc_delta": None,
        }
        base = by.get((model, WITHOUT))
        if variant != WITHOUT and base:
            common = [s for s in order if s in base]
            summary["p_value"] = paired_p_value([seeds[s]["auc"] for s in common],
                                                [base[s]["auc"] for s in common])
            b_auc = float(np.mean([base[s]["auc"] for s in common])) if common else None
            b_ll = float(np.mean([base[s]["logloss"] for s in common])) if common else None
            if common:
                summary["auc_delta"] = float(np.mean([seeds[s]["auc"] for s in common])) - b_auc
                summary["ri_auc"] = ri_auc(float(np.mean([seeds[s]["auc"] for s in common])), b_auc)
                summary["ri_logloss"] = ri_logloss(float(np.mean([seeds[s]["logloss"] for s in common])), b_ll)
        out[model][variant] = summary
    return dict(out)


def _activity_summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per activity bucket: AUC mean ± std over the seeds where it is defined, rows, users."""
    out = {}
    for b in ACTIVITY_BUCKETS:
        per = [r["by_activity"][b] for r in rows if "by_activity" in r]
        if not per:
            continue
        aucs = np.array([p["auc"] for p in per if p["auc"] is not None])
        out[b] = {"auc": float(aucs.mean()) if len(aucs) else None,
                  "auc_std": float(aucs.std(ddof=1)) if len(aucs) > 1 else 0.0,
                  "rows": per[0]["rows"], "users": per[0]["users"]}
    return out


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


def _new_users_section(agg: dict, held: dict[str, Any] | None, metas: dict[str, dict],
                       models: tuple[str, ...]) -> list[str]:
    md = ["## New users: held out of CTR training", ""]
    if held is None:
        return md + ["(off: `new_user_share: 0`)", ""]
    cover = held["coverage"]
    n_rows = next((s["n_rows"] for m in agg.values() for s in m.values()), 0)
    md += [f"{len(held['users'])} users ({100 * held['share']:.0f}%, seed {held['seed']}) were held out "
           "of CTR training: their train and valid rows were dropped, so the model has no user "
           "embedding for them (OOV index) and chose its epoch on the other users' validation rows. "
           f"Their codes come from the code source as for every user. Scored on their {n_rows} test "
           "rows; p: paired t-test of AUC over seeds against the same model without codes on "
           "the same users.", ""]
    if held.get("skipped"):
        md += [f"Skipped (codes for none of the held-out users): {', '.join(held['skipped'])}.", ""]
    md += ["| model | variant | method | codes cover | AUC | Logloss | UAUC | ΔAUC | p (AUC) | seeds |",
           "|" + "---|" * 10]
    for m in models:
        for v, s in sorted(agg.get(m, {}).items(), key=lambda kv: (kv[0] != WITHOUT, kv[0])):
            cov = "—" if v == WITHOUT else f"{100 * cover.get(v, 0):.0f}%"
            delta = "—" if s["auc_delta"] is None else f"{s['auc_delta']:+.4f}"
            md.append(f"| {m} | {v} | {metas.get(v, {}).get('method', v)} | {cov} | {_fmt(s, 'auc')} | "
                      f"{_fmt(s, 'logloss')} | {s['uauc']:.4f} | {delta} | {_p(s['p_value'])} | {s['n_seeds']} |")
    return md + [""]


def _activity_table(title: str, agg: dict) -> list[str]:
    rows = [(m, v, s) for m in sorted(agg) for v, s in sorted(agg[m].items(), key=lambda kv: (kv[0] != WITHOUT, kv[0]))
            if s["by_activity"] and not v.startswith(SWEEP_PREFIX)]
    if not rows:
        return []
    counts = rows[0][2]["by_activity"]
    head = " | ".join(f"{b} ({counts[b]['users']} user{'' if counts[b]['users'] == 1 else 's'}, "
                      f"{counts[b]['rows']} row{'' if counts[b]['rows'] == 1 else 's'})" for b in ACTIVITY_BUCKETS)
    md = [f"### {title}", "", f"| model | variant | {head} |", "|" + "---|" * (2 + len(ACTIVITY_BUCKETS))]
    for m, v, s in rows:
        cells = [("—" if s["by_activity"][b]["auc"] is None else
                  f"{s['by_activity'][b]['auc']:.4f} ± {s['by_activity'][b]['auc_std']:.4f}") for b in ACTIVITY_BUCKETS]
        md.append(f"| {m} | {v} | " + " | ".join(cells) + " |")
    return md + [""]


def leakage(agg: dict, models: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Per model with both stat variants (paper protocol, warm users): AUC of full-history
    against first-half-history stat codes, paired by seed."""
    out = {}
    full, half = f"{STAT_PREFIX}full", f"{STAT_PREFIX}half"
    for m in models:
        f, h = agg.get(m, {}).get(full), agg.get(m, {}).get(half)
        if f is None or h is None:
            continue
        fa, ha = dict(zip(f["seeds"], f["aucs"])), dict(zip(h["seeds"], h["aucs"]))
        common = [s for s in f["seeds"] if s in ha]
        out[m] = {"auc_full": f["auc"], "auc_half": h["auc"],
                  "auc_delta": float(np.mean([fa[s] - ha[s] for s in common])) if common else None,
                  "p_value": paired_p_value([fa[s] for s in common], [ha[s] for s in common]),
                  "n_seeds": len(common)}
    return out


def _leakage_section(agg: dict, leak: dict[str, dict[str, Any]]) -> list[str]:
    if not leak:
        return []
    md = ["## Target leakage: label-derived stat codes, full vs first-half train history", "",
          "Stat codes (`downstream/stat_codes.py`): like-rate quartile + top category of each user's "
          "train history, the full history (`stat-full`) or its first half by time (`stat-half`). Both "
          "come from train labels the CTR model also trains on; on warm users (paper protocol) a "
          "full-history code that scores above the first-half one may be reading back training labels "
          "rather than describing the user (or may just carry twice the history).", "",
          "| model | without | stat-half | stat-full | full − half | p (full vs half) | seeds |",
          "|---|---|---|---|---|---|---|"]
    for m, r in leak.items():
        delta = "—" if r["auc_delta"] is None else f"{r['auc_delta']:+.4f}"
        md.append(f"| {m} | {_fmt(agg[m].get(WITHOUT), 'auc')} | {_fmt(agg[m][f'{STAT_PREFIX}half'], 'auc')} | "
                  f"{_fmt(agg[m][f'{STAT_PREFIX}full'], 'auc')} | {delta} | {_p(r['p_value'])} | {r['n_seeds']} |")
    return md + [""]


def epoch_selection(aggs: dict[str, dict]) -> dict[str, dict[str, Any]]:
    """Per protocol and model: the cap, the best epochs' range, and the fits whose best
    epoch was the cap (the cap bound: more epochs might have scored better)."""
    out: dict[str, dict[str, Any]] = {}
    for protocol, agg in aggs.items():
        for m, variants in sorted(agg.items()):
            best = [e for s in variants.values() for e in s["best_epochs"]]
            cap = next(iter(variants.values()))["epoch_cap"]
            bound = sorted(v for v, s in variants.items() if cap is not None and max(s["best_epochs"]) >= cap)
            out.setdefault(protocol, {})[m] = {"cap": cap, "min": min(best), "max": max(best),
                                               "median": float(np.median(best)), "cap_bound": bound}
    return out


def _epoch_section(epochs: dict[str, dict[str, Any]], section: DownstreamConfig) -> list[str]:
    md = ["## Epoch selection", "",
          f"Early stopping on validation AUC: stop after {section.patience} epochs without a better "
          "one, keep the best state. LightGBM: boosting rounds, early-stopped the same way on its own "
          "cap. A best epoch at the cap means the cap bound.", "",
          "| protocol | model | cap | best epoch min / median / max | cap bound for |", "|---|---|---|---|---|"]
    for protocol, models in epochs.items():
        for m, e in models.items():
            md.append(f"| {protocol} | {m} | {e['cap']} | {e['min']} / {e['median']:g} / {e['max']} | "
                      f"{', '.join(e['cap_bound']) or 'none'} |")
    return md + [""]


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
    rows = collect(run_dir)
    agg = aggregate([r for r in rows if r.get("protocol", PAPER) == PAPER])
    new_agg = aggregate([r for r in rows if r.get("protocol") == NEW_USERS])
    held = read_held_out(run_dir)
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
    md += _new_users_section(new_agg, held, metas, section.ablation_models)
    md += ["## AUC by user activity (train interactions per user)", "",
           "Test AUC (mean ± std over seeds) on the rows of users with <= 10, 11-50 and > 50 train "
           "interactions (size sweeps left out); — where a bucket's rows lack a label or no user "
           "falls in it. Mind the counts in the header: a bucket of a few rows gives a noisy AUC.", ""]
    md += _activity_table("Paper protocol (all users)", agg)
    md += _activity_table("New users (held out of CTR training)", new_agg)
    leak = leakage(agg, section.ablation_models)
    md += _leakage_section(agg, leak)
    epochs = epoch_selection({PAPER: agg, NEW_USERS: new_agg} if new_agg else {PAPER: agg})
    md += _epoch_section(epochs, section)
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
               "primary_codes": primary, "figures": figs, "leakage": leak, "epochs": epochs,
               "new_users": None if held is None else
               {"models": new_agg, **{k: v for k, v in held.items() if k != "users"},
                "n_users": len(held["users"])}}
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (run_dir / "report.md").write_text("\n".join(md))
    return metrics
