"""Feature bank at scale: publish, open and look up synthetic banks; one JSON line per size.

Usage: ``python bench/bank_scale.py [--users 100000 1000000 10000000] [--workdir DIR]``

Each size runs in its own process (so ``max_rss_mb`` is that size's peak): a quantizer
output with two profiles (K = 16 and 8, random codes) and ids ``u<n>`` is written,
``feature_bank.publish`` publishes it, ``FeatureBank.open`` opens it (with every check
open makes), and ``lookup`` answers 10,000 random ids (a tenth unknown); the median of 20
lookups is reported, and ``lookup_correct`` says whether the answers equal the codes
written. Memory, from ``/proc/self/status`` with the peak reset between phases: the peak
while writing the synthetic input (``input_peak_rss_mb``, not the bank's), while
publishing (``publish_peak_rss_mb``), while opening and serving (``serve_peak_rss_mb``),
and what the process holds once the bank is open and has served (``rss_after_open_mb``);
``max_rss_mb`` is the larger of the two bank peaks.
Targets at 10^7 users (issue #11): lookup < 5 ms, open < 5 s, publish < 20 s,
RSS < 1 GB.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _status_mb(key: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak since the last reset) of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no {key} in /proc/self/status")


def _peak_mb_then_reset() -> float:
    peak = _status_mb("VmHWM")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    return peak


def one_size(n: int, work: Path) -> dict:
    import numpy as np
    import polars as pl

    from userip.feature_bank import FeatureBank, publish
    from userip.quantize.layout import CODES, ProfileSize, QuantizeMeta

    rng = np.random.default_rng(0)
    codes = work / "codes"
    codes.mkdir()
    hobby, background = rng.integers(0, 16, n, dtype=np.int32), rng.integers(0, 8, n, dtype=np.int32)
    pl.DataFrame({"user_id": pl.int_range(n, eager=True).cast(pl.String).str.replace(r"^", "u"),
                  "hobby": hobby, "background": background}).write_parquet(codes / CODES)
    picks = rng.integers(0, n + n // 9, 10_000)  # ids u<n> and above are unknown: codes K
    known, at = picks < n, np.minimum(picks, n - 1)
    want = np.column_stack([np.where(known, hobby[at], 16), np.where(known, background[at], 8)])
    del hobby, background
    QuantizeMeta(method="kmeans", kind="codes", profiles=[
        ProfileSize(name="hobby", K=16), ProfileSize(name="background", K=8)]).write(codes)
    input_peak = _peak_mb_then_reset()
    t = time.perf_counter()
    publish(codes, work / "bank", keep=1)
    publish_s = time.perf_counter() - t
    publish_peak = _peak_mb_then_reset()
    t = time.perf_counter()
    bank = FeatureBank.open(work / "bank")
    open_s = time.perf_counter() - t
    query = np.array([f"u{i}" for i in picks], dtype=object)
    laps = []
    for _ in range(20):
        t = time.perf_counter()
        got = bank.lookup(query)
        laps.append(time.perf_counter() - t)
    serve_peak = _status_mb("VmHWM")
    return {"users": n, "publish_s": round(publish_s, 3), "open_s": round(open_s, 3),
            "lookup_10k_ms": round(1000 * statistics.median(laps), 3),
            "lookup_correct": bool((got == want).all()),
            "rss_after_open_mb": _status_mb("VmRSS"),
            "input_peak_rss_mb": input_peak, "publish_peak_rss_mb": publish_peak,
            "serve_peak_rss_mb": serve_peak, "max_rss_mb": max(publish_peak, serve_peak),
            "parquet_mb": round(sum(p.stat().st_size for p in (work / "bank").rglob("codes.parquet")) / 2**20, 2),
            "index_mb": round(sum(p.stat().st_size for p in (work / "bank").rglob("user_index.npy")) / 2**20, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: one size, here
    args = parser.parse_args()
    if args.one:
        work = Path(tempfile.mkdtemp(prefix="userip-bank-scale-", dir=args.workdir))
        try:
            print(json.dumps(one_size(args.one, work)))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    for n in args.users:
        cmd = [sys.executable, __file__, "--one", str(n)]
        if args.workdir:
            cmd += ["--workdir", str(args.workdir)]
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
