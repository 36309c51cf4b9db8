"""``userip report``: paper-style tables, plots and a profile probe from a finished run.

Reads every fit's ``JobMetrics`` (``downstream.layout``) and writes ``report.md``, the
report's ``metrics.json`` (``ReportMetrics``) and ``fig6_auc_vs_codebook_size.png``,
``fig7_logloss_vs_codebook_size.png`` into the run dir.

Statistics: mean ± sample std over seeds; the p-value is a two-sided paired t-test
(scipy ``ttest_rel``) of test AUC with codes against without, paired by seed.
R.I. follows the paper's Eqs. 8 and 9 against the same model without codes.

Sections: the paper protocol's Tables 2-4 and Figs 6-7; "New users" (the new-users
protocol, ``downstream.suite``); "AUC by user activity" (both protocols); "Target leakage"
(stat codes from the full against the first-half train history, when fitted); "Epoch
selection"; the profile probe. Each table is declared below as its columns (``Table``)
and fed by a row source over the aggregated, typed summaries.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from userip.config import DownstreamConfig
from userip.dataprep.readers.movielens_facts import age_bands
from userip.downstream.features import load_users, open_codes
from userip.downstream.layout import (
    NEW_USERS,
    PAPER,
    WITHOUT,
    ActivitySummary,
    EpochRange,
    FitRecord,
    HeldOut,
    JobMetrics,
    Leakage,
    NewUsersReport,
    ProbeResult,
    ReportMetrics,
    RunLayout,
    Summaries,
    VariantSummary,
)
from userip.downstream.metrics import ACTIVITY_BUCKETS, paired_p_value, ri_auc, ri_logloss
from userip.downstream.profile_evidence import profile_evidence
from userip.downstream.suite import STAT_PREFIX, SWEEP_PREFIX, read_held_out, source_of
from userip.downstream.table import Column, Table
from userip.errors import InputError

ABLATION_METHODS = ("userip", "kmeans", "agglomerative", "none")
PROBE_SEED = 0
PROBE_TEST_SHARE = 0.3
STAT_FULL, STAT_HALF = f"{STAT_PREFIX}full", f"{STAT_PREFIX}half"


# ---- aggregation: typed summaries over seeds ------------------------------------------

def collect(run_dir: Path) -> list[JobMetrics]:
    rows = []
    for _, d in RunLayout(run_dir).trained():
        if not JobMetrics.exists(d):
            raise InputError("model not evaluated yet; run `userip evaluate` first", path=str(d))
        rows.append(JobMetrics.read(d))
    return rows


def aggregate(rows: list[JobMetrics]) -> Summaries:
    """{model: {variant: summary}}; codes variants are compared with ``without`` by seed."""
    by: dict[tuple[str, str], dict[int, JobMetrics]] = defaultdict(dict)
    for r in rows:
        by[(r.model, r.variant)][r.seed] = r
    out: Summaries = defaultdict(dict)
    for (model, variant), seeds in sorted(by.items()):
        order = sorted(seeds)
        auc = np.array([seeds[s].auc for s in order])
        ll = np.array([seeds[s].logloss for s in order])
        comparison: dict[str, float | None] = {}
        base = by.get((model, WITHOUT))
        if variant != WITHOUT and base:
            common = [s for s in order if s in base]
            comparison["p_value"] = paired_p_value([seeds[s].auc for s in common],
                                                   [base[s].auc for s in common])
            if common:
                b_auc = float(np.mean([base[s].auc for s in common]))
                b_ll = float(np.mean([base[s].logloss for s in common]))
                c_auc = float(np.mean([seeds[s].auc for s in common]))
                comparison["auc_delta"] = c_auc - b_auc
                comparison["ri_auc"] = ri_auc(c_auc, b_auc)
                comparison["ri_logloss"] = ri_logloss(float(np.mean([seeds[s].logloss for s in common])), b_ll)
        out[model][variant] = VariantSummary(
            auc=float(auc.mean()), auc_std=float(auc.std(ddof=1)) if len(auc) > 1 else 0.0,
            logloss=float(ll.mean()), logloss_std=float(ll.std(ddof=1)) if len(ll) > 1 else 0.0,
            uauc=float(np.nanmean([seeds[s].uauc for s in order])),
            n_seeds=len(order), seeds=order, aucs=auc.tolist(),
            best_epochs=[seeds[s].best_epoch for s in order],
            epochs_run=[seeds[s].epochs_run for s in order],
            epoch_cap=seeds[order[0]].epoch_cap, n_rows=seeds[order[0]].n,
            by_activity=_activity_summary([seeds[s] for s in order]), **comparison)
    return dict(out)


def _activity_summary(rows: list[JobMetrics]) -> dict[str, ActivitySummary]:
    """Per activity bucket: AUC mean ± std over the seeds where it is defined, rows, users."""
    out = {}
    for b in ACTIVITY_BUCKETS:
        per = [r.by_activity[b] for r in rows]
        aucs = np.array([p.auc for p in per if p.auc is not None])
        out[b] = ActivitySummary(auc=float(aucs.mean()) if len(aucs) else None,
                                 auc_std=float(aucs.std(ddof=1)) if len(aucs) > 1 else 0.0,
                                 rows=per[0].rows, users=per[0].users)
    return out


def leakage(agg: Summaries, models: tuple[str, ...]) -> dict[str, Leakage]:
    """Per model with both stat variants (paper protocol, warm users): AUC of full-history
    against first-half-history stat codes, paired by seed."""
    out = {}
    for m in models:
        f, h = agg.get(m, {}).get(STAT_FULL), agg.get(m, {}).get(STAT_HALF)
        if f is None or h is None:
            continue
        fa, ha = dict(zip(f.seeds, f.aucs)), dict(zip(h.seeds, h.aucs))
        common = [s for s in f.seeds if s in ha]
        out[m] = Leakage(auc_full=f.auc, auc_half=h.auc,
                         auc_delta=float(np.mean([fa[s] - ha[s] for s in common])) if common else None,
                         p_value=paired_p_value([fa[s] for s in common], [ha[s] for s in common]),
                         n_seeds=len(common))
    return out


def epoch_selection(aggs: dict[str, Summaries]) -> dict[str, dict[str, EpochRange]]:
    """Per protocol and model: the cap, the best epochs' range, and the fits whose best
    epoch was the cap (the cap bound: more epochs might have scored better)."""
    out: dict[str, dict[str, EpochRange]] = {}
    for protocol, agg in aggs.items():
        for m, variants in sorted(agg.items()):
            best = [e for s in variants.values() for e in s.best_epochs]
            cap = next(iter(variants.values())).epoch_cap
            bound = sorted(v for v, s in variants.items() if max(s.best_epochs) >= cap)
            out.setdefault(protocol, {})[m] = EpochRange(cap=cap, min=min(best), max=max(best),
                                                         median=float(np.median(best)), cap_bound=bound)
    return out


# ---- cells ----------------------------------------------------------------------------

def _fmt(s: VariantSummary | None, key: str) -> str:
    if s is None:
        return "—"
    return f"{getattr(s, key):.4f} ± {getattr(s, key + '_std'):.4f}"


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:+.2f}%"


def _p(x: float | None) -> str:
    return "—" if x is None else f"{x:.3g}"


def _delta(x: float | None) -> str:
    return "—" if x is None else f"{x:+.4f}"


def _sizes(meta: dict[str, Any]) -> str:
    if meta.get("kind") == "dense":
        return "dense (no codes)"
    return "/".join(str(p["K"]) for p in meta.get("profiles", [])) or "—"


def _without_first(variants: dict[str, VariantSummary]) -> list[tuple[str, VariantSummary]]:
    return sorted(variants.items(), key=lambda kv: (kv[0] != WITHOUT, kv[0]))


# ---- the tables: rows and columns -----------------------------------------------------

@dataclass(frozen=True)
class CompareRow:
    """Tables 2 and 3: a model without and with one codes variant."""

    model: str
    base: VariantSummary | None
    cur: VariantSummary | None


@dataclass(frozen=True)
class VariantRow:
    """Table 4 and the new-users table: one (model, variant) summary."""

    model: str
    variant: str
    s: VariantSummary
    meta: dict[str, Any]
    coverage: float | None = None  # share of held-out users the variant has codes for

    @property
    def method(self) -> str:
        return self.meta.get("method", self.variant)


@dataclass(frozen=True)
class LeakRow:
    model: str
    without: VariantSummary | None
    half: VariantSummary
    full: VariantSummary
    leak: Leakage


COMPARE = Table[CompareRow]((
    Column("model", lambda r: r.model),
    Column("AUC without", lambda r: _fmt(r.base, "auc")),
    Column("AUC with", lambda r: _fmt(r.cur, "auc")),
    Column("Logloss without", lambda r: _fmt(r.base, "logloss")),
    Column("Logloss with", lambda r: _fmt(r.cur, "logloss")),
    Column("UAUC with", lambda r: "—" if r.cur is None else f"{r.cur.uauc:.4f}"),
    Column("R.I. AUC", lambda r: _pct(r.cur and r.cur.ri_auc)),
    Column("R.I. Logloss", lambda r: _pct(r.cur and r.cur.ri_logloss)),
    Column("p (AUC)", lambda r: _p(r.cur and r.cur.p_value)),
    Column("seeds", lambda r: str((r.cur or r.base).n_seeds)),
))

ABLATION = Table[VariantRow]((
    Column("model", lambda r: r.model),
    Column("variant", lambda r: r.variant),
    Column("method", lambda r: r.method),
    Column("K per profile", lambda r: _sizes(r.meta)),
    Column("AUC", lambda r: _fmt(r.s, "auc")),
    Column("Logloss", lambda r: _fmt(r.s, "logloss")),
    Column("UAUC", lambda r: f"{r.s.uauc:.4f}"),
    Column("R.I. AUC", lambda r: _pct(r.s.ri_auc)),
    Column("p (AUC)", lambda r: _p(r.s.p_value)),
))

NEW_USERS_TABLE = Table[VariantRow]((
    Column("model", lambda r: r.model),
    Column("variant", lambda r: r.variant),
    Column("method", lambda r: r.method),
    Column("codes cover", lambda r: "—" if r.coverage is None else f"{100 * r.coverage:.0f}%"),
    Column("AUC", lambda r: _fmt(r.s, "auc")),
    Column("Logloss", lambda r: _fmt(r.s, "logloss")),
    Column("UAUC", lambda r: f"{r.s.uauc:.4f}"),
    Column("ΔAUC", lambda r: _delta(r.s.auc_delta)),
    Column("p (AUC)", lambda r: _p(r.s.p_value)),
    Column("seeds", lambda r: str(r.s.n_seeds)),
))

LEAKAGE = Table[LeakRow]((
    Column("model", lambda r: r.model),
    Column("without", lambda r: _fmt(r.without, "auc")),
    Column("stat-half", lambda r: _fmt(r.half, "auc")),
    Column("stat-full", lambda r: _fmt(r.full, "auc")),
    Column("full − half", lambda r: _delta(r.leak.auc_delta)),
    Column("p (full vs half)", lambda r: _p(r.leak.p_value)),
    Column("seeds", lambda r: str(r.leak.n_seeds)),
))

EPOCHS = Table[tuple[str, str, EpochRange]]((
    Column("protocol", lambda r: r[0]),
    Column("model", lambda r: r[1]),
    Column("cap", lambda r: str(r[2].cap)),
    Column("best epoch min / median / max", lambda r: f"{r[2].min} / {r[2].median:g} / {r[2].max}"),
    Column("cap bound for", lambda r: ", ".join(r[2].cap_bound) or "none"),
))

PROBE = Table[tuple[str, str, ProbeResult]]((
    Column("variant", lambda r: r[0]),
    Column("attribute", lambda r: r[1]),
    Column("accuracy", lambda r: f"{r[2].accuracy:.3f}"),
    Column("majority", lambda r: f"{r[2].majority:.3f}"),
    Column("classes", lambda r: str(r[2].classes)),
    Column("test users", lambda r: str(r[2].test_users)),
))


# The end-of-run table of ``userip run`` (``userip.cli.summary``): every (model, variant) of
# the paper protocol, rows from ``summary_rows``.
SUMMARY = Table[tuple[str, str, VariantSummary]]((
    Column("model", lambda r: r[0]),
    Column("variant", lambda r: r[1]),
    Column("AUC", lambda r: _fmt(r[2], "auc")),
    Column("Logloss", lambda r: _fmt(r[2], "logloss")),
    Column("UAUC", lambda r: f"{r[2].uauc:.4f}"),
    Column("R.I. AUC", lambda r: _pct(r[2].ri_auc)),
    Column("p (AUC)", lambda r: _p(r[2].p_value)),
))


def activity_table(counts: dict[str, ActivitySummary]) -> Table[tuple[str, str, VariantSummary]]:
    """Model, variant, then one column per activity bucket, headed by its users and rows."""
    def bucket(b: str) -> Column[tuple[str, str, VariantSummary]]:
        users, rows = counts[b].users, counts[b].rows
        header = (f"{b} ({users} user{'' if users == 1 else 's'}, "
                  f"{rows} row{'' if rows == 1 else 's'})")

        def cell(r: tuple[str, str, VariantSummary]) -> str:
            a = r[2].by_activity[b]
            return "—" if a.auc is None else f"{a.auc:.4f} ± {a.auc_std:.4f}"
        return Column(header, cell)
    return Table((Column("model", lambda r: r[0]), Column("variant", lambda r: r[1]),
                  *(bucket(b) for b in ACTIVITY_BUCKETS)))


def compare_rows(models: list[str], variant: str, agg: Summaries) -> list[CompareRow]:
    rows = [CompareRow(m, agg.get(m, {}).get(WITHOUT), agg.get(m, {}).get(variant)) for m in models]
    return [r for r in rows if r.base is not None or r.cur is not None]


def ablation_rows(models: tuple[str, ...], agg: Summaries, metas: dict[str, dict]) -> list[VariantRow]:
    """``without`` and every plain quantizer method's variant (not the sweeps, not stat codes)."""
    variants = [WITHOUT, *[v for v in metas if metas[v].get("method") in ABLATION_METHODS
                           and v == metas[v]["method"]]]
    return [VariantRow(m, v, agg[m][v], metas.get(v, {})) for m in models for v in variants
            if v in agg.get(m, {})]


def new_user_rows(models: tuple[str, ...], agg: Summaries, metas: dict[str, dict],
                  held: HeldOut) -> list[VariantRow]:
    return [VariantRow(m, v, s, metas.get(v, {}), None if v == WITHOUT else held.coverage.get(v, 0))
            for m in models for v, s in _without_first(agg.get(m, {}))]


def activity_rows(agg: Summaries) -> list[tuple[str, str, VariantSummary]]:
    """Every (model, variant) but the size sweeps."""
    return [(m, v, s) for m in sorted(agg) for v, s in _without_first(agg[m])
            if s.by_activity and not v.startswith(SWEEP_PREFIX)]


def leak_rows(agg: Summaries, leak: dict[str, Leakage]) -> list[LeakRow]:
    return [LeakRow(m, agg[m].get(WITHOUT), agg[m][STAT_HALF], agg[m][STAT_FULL], r) for m, r in leak.items()]


def summary_rows(report: ReportMetrics) -> list[tuple[str, str, VariantSummary]]:
    return [(m, v, s) for m, variants in sorted(report.models.items()) for v, s in sorted(variants.items())]


# ---- sections -------------------------------------------------------------------------

def _new_users_section(agg: Summaries, held: HeldOut | None, metas: dict[str, dict],
                       models: tuple[str, ...]) -> list[str]:
    md = ["## New users: held out of CTR training", ""]
    if held is None:
        return md + ["(off: `new_user_share: 0`)", ""]
    n_rows = next((s.n_rows for m in agg.values() for s in m.values()), 0)
    md += [f"{len(held.users)} users ({100 * held.share:.0f}%, seed {held.seed}) were held out "
           "of CTR training: their train and valid rows were dropped, so the model has no user "
           "embedding for them (OOV index) and chose its epoch on the other users' validation rows. "
           f"Their codes come from the code source as for every user. Scored on their {n_rows} test "
           "rows; p: paired t-test of AUC over seeds against the same model without codes on "
           "the same users.", ""]
    if held.skipped:
        md += [f"Skipped (codes for none of the held-out users): {', '.join(held.skipped)}.", ""]
    return md + NEW_USERS_TABLE.render(new_user_rows(models, agg, metas, held)) + [""]


def _activity_section(title: str, agg: Summaries) -> list[str]:
    rows = activity_rows(agg)
    if not rows:
        return []
    return [f"### {title}", "", *activity_table(rows[0][2].by_activity).render(rows), ""]


def _leakage_section(agg: Summaries, leak: dict[str, Leakage]) -> list[str]:
    if not leak:
        return []
    return ["## Target leakage: label-derived stat codes, full vs first-half train history", "",
            "Stat codes (`downstream/stat_codes.py`): like-rate quartile + top category of each user's "
            "train history, the full history (`stat-full`) or its first half by time (`stat-half`). Both "
            "come from train labels the CTR model also trains on; on warm users (paper protocol) a "
            "full-history code that scores above the first-half one may be reading back training labels "
            "rather than describing the user (or may just carry twice the history).", "",
            *LEAKAGE.render(leak_rows(agg, leak)), ""]


def _epoch_section(epochs: dict[str, dict[str, EpochRange]], patience: int) -> list[str]:
    rows = [(protocol, m, e) for protocol, models in epochs.items() for m, e in models.items()]
    return ["## Epoch selection", "",
            f"Early stopping on validation AUC: stop after {patience} epochs without a better "
            "one, keep the best state. LightGBM: boosting rounds, early-stopped the same way on its own "
            "cap. A best epoch at the cap means the cap bound.", "", *EPOCHS.render(rows), ""]


def _probe_section(probes: dict[str, dict[str, ProbeResult]]) -> list[str]:
    rows = [(v, attr, r) for v, res in probes.items() for attr, r in res.items()]
    return ["## Profile probe: do codes predict held-out user attributes?", "",
            f"Logistic regression on one-hot codes; {int(100 * (1 - PROBE_TEST_SHARE))}/"
            f"{int(100 * PROBE_TEST_SHARE)} user split (seed {PROBE_SEED}); accuracy vs always "
            "predicting the training users' majority class. A large gap on gender or age is also "
            "a fairness flag: the codes encode a protected attribute.", "", *PROBE.render(rows), ""]


def probe(data_dir: Path, run_dir: Path, metas: dict[str, dict]) -> dict[str, dict[str, ProbeResult]]:
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
        targets["age_band"] = age_bands(users["age"])
    out: dict[str, dict[str, ProbeResult]] = {}
    uid = users["user_id"].to_numpy()
    trained = RunLayout(run_dir).trained()
    for variant, meta in metas.items():
        if meta.get("kind") != "codes":
            continue
        model_dir = next((d for job, d in trained if job.variant == variant), None)
        if model_dir is None:
            continue
        path, is_bank, version = source_of(FitRecord.read(model_dir), None)
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
            res[name] = ProbeResult(accuracy=float(clf.score(xi[te], yi[te])), majority=majority,
                                    classes=int(len(values)), test_users=int(len(te)))
        out[variant] = res
    return out


def _plot(series: dict[str, list[tuple[int, str, VariantSummary]]], key: str, path: Path, title: str) -> None:
    """One line per swept profile: test ``key`` against that profile's codebook size."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, points in series.items():
        points = sorted(points, key=lambda p: (p[0], p[1]))
        ax.errorbar([p[0] for p in points], [getattr(p[2], key) for p in points],
                    yerr=[getattr(p[2], key + "_std") for p in points], marker="o", capsize=3, label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("codebook size K of the swept profile")
    ax.set_ylabel(f"test {key} (mean ± std over seeds)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sweep_series(metas: dict[str, dict], results: dict[str, VariantSummary]
                 ) -> dict[str, list[tuple[int, str, VariantSummary]]]:
    """Per swept profile, ``(K, variant, metrics)`` points: the sweep's k-means variants plus
    the plain k-means variant at the profile's default K (the same method, one more size)."""
    series: dict[str, list[tuple[int, str, VariantSummary]]] = {}
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


def write_report(run_dir: Path, data_dir: Path, section: DownstreamConfig) -> ReportMetrics:
    layout = RunLayout(run_dir)
    rows = collect(layout.run_dir)
    agg = aggregate([r for r in rows if r.protocol == PAPER])
    new_agg = aggregate([r for r in rows if r.protocol == NEW_USERS])
    held = read_held_out(layout.run_dir)
    metas = layout.variant_metas()
    notes = sorted({f"{v}: {m['note']}" for v, m in metas.items() if m.get("note")})
    primary = section.primary_codes
    md = ["# Downstream CTR report", "", f"Run dir: `{layout.run_dir}`; data: `{data_dir}`.", ""]
    if notes:
        md += ["> **Codes provenance.** " + " ".join(f"`{n}`" for n in notes), ""]
    md += ["Mean ± std over seeds of test metrics; the epoch was picked on validation AUC only. "
           "R.I. per paper Eqs. 8–9 against the same model without codes; p: two-sided paired "
           "t-test (scipy `ttest_rel`) of test AUC over seeds.", ""]
    md += [f"## Table 2 analogue: every model, with and without `{primary}` codes", ""]
    table2 = sorted(m for m in agg if m in set(section.models) | set(section.transfer_models) or primary in agg[m])
    md += COMPARE.render(compare_rows(table2, primary, agg)) + [""]
    transfer = list(dict.fromkeys([*section.ablation_models, *section.transfer_models]))
    md += [f"## Table 3: `{primary}` codes (trained with the DCN surrogate) transferred to other models", ""]
    md += COMPARE.render(compare_rows(transfer, primary, agg)) + [""]
    md += ["## Table 4: quantization ablation", ""]
    md += ABLATION.render(ablation_rows(section.ablation_models, agg, metas)) + [""]
    figs = []
    for m in section.ablation_models[:1]:
        series = sweep_series(metas, agg.get(m, {}))
        if series:
            for key, fig_no in (("auc", 6), ("logloss", 7)):
                path = layout.figure(f"fig{fig_no}_{key}_vs_codebook_size.png")
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
    md += _activity_section("Paper protocol (all users)", agg)
    md += _activity_section("New users (held out of CTR training)", new_agg)
    leak = leakage(agg, section.ablation_models)
    md += _leakage_section(agg, leak)
    epochs = epoch_selection({PAPER: agg, NEW_USERS: new_agg} if new_agg else {PAPER: agg})
    md += _epoch_section(epochs, section.patience)
    evidence_md, evidence = profile_evidence(metas)
    md += evidence_md
    probes = probe(data_dir, layout.run_dir, metas)
    md += _probe_section(probes)
    metrics = ReportMetrics(
        models=agg, variants=metas, probe=probes, evidence=evidence, notes=notes, primary_codes=primary,
        figures=figs, leakage=leak, epochs=epochs,
        new_users=None if held is None else NewUsersReport(
            models=new_agg, **held.model_dump(exclude={"users"}), n_users=len(held.users)))
    metrics.write(layout.run_dir)
    layout.report.write_text("\n".join(md))
    return metrics


_ARTIFACT_KEYS = {"auc", "auc_std", "logloss", "logloss_std", "uauc", "n_seeds", "p_value", "ri_auc"}


def metric_rows(report: ReportMetrics) -> list[dict]:
    """One row per (model, variant) of the paper protocol, for the Prefect table artifact."""
    return [{"model": m, "variant": v, **s.model_dump(include=_ARTIFACT_KEYS)} for m, v, s in summary_rows(report)]
