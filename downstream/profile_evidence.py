"""The report's "Does the profile carry the user?" section, from what the stages measured.

Reads the evidence the profile stage wrote to its ``meta.json`` (own- vs other-θ LM loss)
and the quantize stage to each method's ``meta.json`` (NMI with like-rate and taste
against a permutation null, ARI against UserIP), both reached through the variants'
recorded metas; nothing is recomputed here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from userip.downstream.table import Column, Table
from userip.profile_infer.layout import ProfileMeta

# (label, the profile stage's gap figures: own, other, gap, ci95, p_value)
LM_GAP = Table[tuple[str, dict[str, Any]]]((
    Column("profile", lambda r: r[0]),
    Column("own", lambda r: f"{r[1]['own']:.4f}"),
    Column("other", lambda r: f"{r[1]['other']:.4f}"),
    Column("gap", lambda r: f"{r[1]['gap']:+.4f}"),
    Column("95% CI", lambda r: "[{:+.4f}, {:+.4f}]".format(*r[1]["ci95"])),
    Column("p", lambda r: f"{r[1]['p_value']:.2g}"),
))
# (variant, profile, attribute, the quantize stage's NMI test: nmi, null_p99, p_value, users)
CODE_NMI = Table[tuple[str, str, str, dict[str, Any]]]((
    Column("variant", lambda r: r[0]),
    Column("profile", lambda r: r[1]),
    Column("attribute", lambda r: r[2]),
    Column("NMI", lambda r: f"{r[3]['nmi']:.4f}"),
    Column("null p99", lambda r: f"{r[3]['null_p99']:.4f}"),
    Column("p", lambda r: f"{r[3]['p_value']:.3g}"),
    Column("users", lambda r: str(r[3]["users"])),
))


def profile_evidence(metas: dict[str, dict[str, Any]]) -> tuple[list[str], dict[str, Any]]:
    """Markdown lines and the figures behind them (for metrics.json)."""
    md = ["## Does the profile carry the user?", ""]
    found: dict[str, Any] = {}
    source = next((m["source_profile"] for m in metas.values() if m.get("source_profile")), None)
    if source is not None and ProfileMeta.path(Path(source)).is_file():
        lm = ProfileMeta.read(Path(source)).evidence or {}
        found["lm"] = lm
        if "theta" in lm:
            fb = lm.get("feedback", {})
            md += [f"Validation LM loss (mean target NLL of the valid-split items, {lm['n_users']} "
                   "users) with each user's own profile against other users' (the mean over "
                   f"{lm.get('draws', 1)} seeded derangement(s)); gap = other − own per user, 95% "
                   "t-interval, paired t-test; *feedback word*: the first token of the liked / "
                   "disliked marks alone, on the users who have one. Every user at the mean θ: "
                   f"{lm['mean_theta']:.4f} (feedback word: "
                   + (f"{fb['mean_theta']:.4f}" if fb else "not scored") + ").", "",
                   *LM_GAP.render([(name + tokens, part[kind])
                                   for tokens, part in (("", lm), (", feedback word", fb))
                                   for kind, name in (("theta", "θ"), ("code", "code vectors"))
                                   if kind in part]), ""]
        elif lm:
            md += [f"No LM-loss evidence: {lm.get('note', 'not measured')}.", ""]
    rows = []
    for variant, meta in metas.items():
        for profile, facts in (meta.get("evidence") or {}).items():
            if not isinstance(facts, dict):
                continue
            rows += [(variant, profile, fact, t) for fact, t in facts.items()]
        if meta.get("evidence"):
            found.setdefault("codes", {})[variant] = meta["evidence"]
        if meta.get("ari_vs_userip"):
            found.setdefault("ari_vs_userip", {})[variant] = meta["ari_vs_userip"]
    if rows:
        md += ["Normalized mutual information of each variant's codes with the user's train "
               "like-rate (quartiles) and taste (highest-lift category), against a permutation "
               "null (99th percentile; permutation p-value).", "",
               *CODE_NMI.render(rows), ""]
    for variant, ari in found.get("ari_vs_userip", {}).items():
        md.append(f"Adjusted Rand index of `{variant}` codes against UserIP's: "
                  + ", ".join(f"{p} {v:.3f}" for p, v in ari.items()) + ".")
    if found.get("ari_vs_userip"):
        md.append("")
    if len(md) == 2:
        md += ["(no evidence recorded: the codes come from no profile run of this version)", ""]
    return md, found
