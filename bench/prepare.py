"""Benchmark ``userip prepare`` against a straightforward pandas pipeline on the same dump.

Generates (seeded) an Amazon-2018-format reviews file of ``--rows`` lines and a matching
metadata file, then runs, each as a subprocess: (a) ``userip prepare --source amazon2018``
and (b) pandas ``read_json(lines=True)`` -> drop duplicates -> 5-core loop -> label ->
random 8:1:1 split -> Parquet. Wall time and the peak RSS of each process tree (psutil,
polled every 20 ms), CPU seconds and the load average are printed as JSON with rows/s and
the ratios (on a shared box, the CPU ratio is the steadier one).

    python bench/prepare.py [--rows 2000000] [--repeats 1] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]

_WORDS = (
    "the this product works great well quality price love recommend would again bought "
    "after months use easy small large size fits perfectly color exactly pictured cheap "
    "flimsy broke returned disappointed excellent value money fast shipping arrived "
    "described battery life sound screen comfortable sturdy build material soft gift "
    "daughter son husband wife kitchen garden book story characters author plot ending "
    "read pages recipe instructions assembly minutes hours design look feel stars really"
).split()
_FORMATS = ("Paperback", "Hardcover", "Kindle Edition", "Audio CD", "Size: Large", "Color: Blue")
_CATEGORIES = ("Books", "Literature & Fiction", "Home & Kitchen", "Electronics", "Toys & Games",
               "Sports & Outdoors", "Beauty", "Kids &amp; Family", "Tools", "Garden")

PANDAS_PIPELINE = r'''
import sys
import numpy as np
import pandas as pd

reviews, meta, out, k = sys.argv[1], sys.argv[2], sys.argv[3], 5
df = pd.read_json(reviews, lines=True)
df = df.rename(columns={"reviewerID": "user_id", "asin": "item_id", "overall": "rating",
                        "unixReviewTime": "ts", "reviewText": "review"})
df = df[["user_id", "item_id", "rating", "ts", "review"]]
df = df.sort_values("ts").drop_duplicates(["user_id", "item_id"], keep="last")
while True:
    users = df["user_id"].map(df["user_id"].value_counts())
    items = df["item_id"].map(df["item_id"].value_counts())
    kept = df[(users >= k) & (items >= k)]
    if len(kept) == len(df):
        break
    df = kept
df = df.assign(label=(df["rating"] >= 4).astype("int8"))
draw = np.random.default_rng(42).random(len(df))
df["split"] = np.where(draw < 0.8, "train", np.where(draw < 0.9, "valid", "test"))
items = pd.read_json(meta, lines=True)
items = items[items["asin"].isin(df["item_id"])].drop_duplicates("asin")
items["price"] = pd.to_numeric(items["price"].astype(str).str.replace(r"[$,]", "", regex=True)
                               .str.split(" - ").str[0], errors="coerce")
df.to_parquet(f"{out}/interactions.parquet")
items[["asin", "title", "brand", "price"]].to_parquet(f"{out}/items.parquet")
print(len(df), "interactions kept", file=sys.stderr)
'''


def generate(rows: int, folder: Path, seed: int = 0, gz: bool = False) -> tuple[Path, Path]:
    """Write ``reviews.json`` (``rows`` lines) and ``meta.json`` in the Amazon 2018 format;
    ``gz``: ``reviews.json.gz`` and ``meta.json.gz`` (level 1), for dumps larger than the disk."""
    rng = np.random.default_rng(seed)
    n_users, n_items = max(rows // 8, 10), max(rows // 20, 10)
    # Skewed activity, as in real dumps: a few heavy users and best sellers.
    users = (n_users * rng.random(rows) ** 2.0).astype(np.int64)
    items = (n_items * rng.random(rows) ** 1.5).astype(np.int64)
    ratings = rng.choice([1, 2, 3, 4, 5], size=rows, p=[0.06, 0.05, 0.09, 0.2, 0.6])
    times = rng.integers(1_100_000_000, 1_530_000_000, size=rows)
    pool = [" ".join(rng.choice(_WORDS, size=int(rng.integers(20, 120)))).capitalize() + "."
            for _ in range(20_000)]
    texts = rng.integers(0, len(pool), size=rows)
    votes = rng.integers(0, 40, size=rows)
    formats = rng.integers(0, len(_FORMATS), size=rows)
    suffix = ".json.gz" if gz else ".json"
    reviews = folder / f"reviews{suffix}"
    with _open_text(reviews, gz) as fh:
        for r in range(rows):
            ts = int(times[r])
            day = time.gmtime(ts)
            vote = f', "vote": "{votes[r]}"' if votes[r] > 30 else ""
            fh.write(
                f'{{"overall": {ratings[r]}.0, "verified": true, '
                f'"reviewTime": "{day.tm_mon:02d} {day.tm_mday}, {day.tm_year}", '
                f'"reviewerID": "A{users[r]:013d}", "asin": "B{items[r]:09d}", '
                f'"style": {{"Format:": " {_FORMATS[formats[r]]}"}}, '
                f'"reviewerName": "Reviewer {users[r]}", "reviewText": "{pool[texts[r]]}", '
                f'"summary": "{pool[texts[r]][:30]}", "unixReviewTime": {ts}{vote}}}\n'
            )
    meta = folder / f"meta{suffix}"
    with _open_text(meta, gz) as fh:
        for i in range(n_items):
            cats = list(rng.choice(_CATEGORIES, size=int(rng.integers(1, 4)), replace=False))
            record = {
                "category": cats, "description": [f"<b>{pool[i % len(pool)]}</b>"],
                "title": f"Item {i} &amp; {pool[(7 * i) % len(pool)][:40]}",
                "brand": f"Brand {i % 997}", "price": f"${rng.integers(1, 20000) / 100:.2f}",
                "asin": f"B{i:09d}", "also_buy": [f"B{j:09d}" for j in rng.integers(0, n_items, 5)],
                "rank": f"{rng.integers(1, 10**6):,} in Books (", "main_cat": "Books",
            }
            fh.write(json.dumps(record) + "\n")
    return reviews, meta


def _open_text(path: Path, gz: bool) -> IO[str]:
    if gz:
        return gzip.open(path, "wt", encoding="utf-8", compresslevel=1)
    return open(path, "w", encoding="utf-8", buffering=1 << 20)


def measure(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    """Wall and CPU seconds and peak memory of one command: ``peak_rss_mib`` sums the
    process tree (psutil, polled every 20 ms); ``maxrss_mib`` is the kernel's exact peak of
    its largest process (``wait4``)."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root = psutil.Process(proc.pid)
    peak = 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree))
        except psutil.Error:
            pass
        time.sleep(0.02)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed ({proc.returncode}):\n{stderr[-3000:]}")
    return {"wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_mib": round(peak / 2**20, 1), "maxrss_mib": round(usage.ru_maxrss / 1024, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workdir", type=Path,
                        help="where to write the dump (default: the system temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--skip-pandas", action="store_true", help="time userip only")
    args = parser.parse_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="userip-bench-", dir=args.workdir))
    # The checkout's packages first, so the benchmark measures this tree's code.
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    try:
        started = time.perf_counter()
        reviews, meta = generate(args.rows, folder)
        generated_s = time.perf_counter() - started
        (folder / "pandas_pipeline.py").write_text(PANDAS_PIPELINE)
        runs: dict[str, list[dict[str, float]]] = {"userip": [], "pandas": []}
        for repeat in range(args.repeats):
            out = folder / f"userip-out-{repeat}"
            runs["userip"].append(measure(
                [sys.executable, "-m", "userip.cli", "prepare", "--source", "amazon2018",
                 "--reviews", str(reviews), "--meta", str(meta), "--out", str(out)], env))
            shutil.rmtree(out, ignore_errors=True)
            if not args.skip_pandas:
                out = folder / f"pandas-out-{repeat}"
                out.mkdir()
                runs["pandas"].append(measure(
                    [sys.executable, str(folder / "pandas_pipeline.py"), str(reviews), str(meta),
                     str(out)], env))
                shutil.rmtree(out, ignore_errors=True)
        report: dict[str, object] = {
            "rows": args.rows,
            "reviews_mib": round(reviews.stat().st_size / 2**20, 1),
            "generate_s": round(generated_s, 1),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
                       f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM",
        }
        for name, results in runs.items():
            if results:
                wall = statistics.median(r["wall_s"] for r in results)
                report[name] = {"runs": results, "median_wall_s": wall,
                                "rows_per_s": round(args.rows / wall),
                                "median_cpu_s": statistics.median(r["cpu_s"] for r in results),
                                "peak_rss_mib": max(r["peak_rss_mib"] for r in results)}
        if runs["pandas"]:
            u, p = report["userip"], report["pandas"]
            report["speedup_rows_per_s"] = round(u["rows_per_s"] / p["rows_per_s"], 2)
            report["cpu_ratio_pandas_over_userip"] = round(p["median_cpu_s"] / u["median_cpu_s"], 2)
            report["rss_ratio_userip_over_pandas"] = round(u["peak_rss_mib"] / p["peak_rss_mib"], 3)
            report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        print(json.dumps(report, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
