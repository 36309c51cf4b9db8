"""Figs 6-7 data: one line per swept profile, joined by the plain k-means point."""

from __future__ import annotations

from userip.downstream.report import sweep_series


def _meta(hobby: int, background: int, sweep: dict | None = None) -> dict:
    meta = {"method": "kmeans", "kind": "codes",
            "profiles": [{"name": "hobby", "K": hobby}, {"name": "background", "K": background}]}
    return {**meta, "sweep": sweep} if sweep else meta


def test_sweep_series_one_line_per_swept_profile() -> None:
    metas = {
        "kmeans": _meta(4, 3),
        "userip": {**_meta(4, 3), "method": "userip"},
        "sweep-hobby_K8": _meta(8, 3, {"profile": "hobby", "K": 8}),
        "sweep-hobby_K16": _meta(16, 3, {"profile": "hobby", "K": 16}),
        "sweep-background_K8": _meta(4, 8, {"profile": "background", "K": 8}),
        "sweep-background_K32": _meta(4, 32, {"profile": "background", "K": 32}),
    }
    results = {v: {"auc": 0.7 + i / 100} for i, v in enumerate(metas) if v != "sweep-background_K32"}
    series = sweep_series(metas, results)
    assert {name: sorted((k, v) for k, v, _ in pts) for name, pts in series.items()} == {
        "background": [(3, "kmeans"), (8, "sweep-background_K8")],  # K32 has no results yet
        "hobby": [(4, "kmeans"), (8, "sweep-hobby_K8"), (16, "sweep-hobby_K16")],
    }
    assert next(m for k, _, m in series["hobby"] if k == 8) is results["sweep-hobby_K8"]


def test_sweep_series_needs_two_sizes() -> None:
    metas = {"sweep-hobby_K8": _meta(8, 3, {"profile": "hobby", "K": 8})}
    assert sweep_series(metas, {"sweep-hobby_K8": {"auc": 0.7}}) == {}
