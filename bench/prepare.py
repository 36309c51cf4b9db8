"""Benchmark ``userip prepare`` against plain-polars and DuckDB pipelines on the same dump.

Generates (seeded) an Amazon-2018-format reviews file of ``--rows`` lines and a matching
metadata file (``--gzip``: compressed, for dumps larger than the disk), then runs, each as
a subprocess and interleaved over ``--repeats``: (a) ``userip prepare --source amazon2018``,
(b) polars ``read_ndjson`` + expressions and (c) DuckDB ``read_json`` + SQL with the k-core
as a loop, both doing the same steps without line-level quarantine (``POLARS_PIPELINE``,
``DUCKDB_PIPELINE``). Wall time, CPU seconds and the peak RSS of each process tree (psutil,
polled every 20 ms; a tree above ``--memory-limit-gib`` is killed and reported out of
memory, one running past ``--time-limit-s`` killed and reported stopped) are printed as
JSON with rows/s, the ratios and whether all three agree on the counts (interactions,
users, items). On a shared box, the CPU ratio is the steadier one.
DuckDB is a bench-only extra: ``pip install -e .[bench]``.

    python bench/prepare.py [--rows 2000000] [--repeats 1] [--gzip] [--dump DIR]
                            [--tools userip,polars,duckdb] [--time-limit-s S]
                            [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

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

# The peers: what a data engineer would write for the same steps (dedupe keeping the latest
# review of a pair, 5-core loop, contiguous indices in id order, label, 8:1:1 split, the
# published order, behaviour text of the train split, items with parsed prices), without
# line-level quarantine. Each prints its counts as one JSON line.
POLARS_PIPELINE = r'''
import json, sys
import polars as pl

reviews, meta, out, k = sys.argv[1], sys.argv[2], sys.argv[3], 5
df = pl.read_ndjson(reviews, schema={"reviewerID": pl.String, "asin": pl.String,
                                     "overall": pl.Float32, "unixReviewTime": pl.Int64,
                                     "reviewText": pl.String})
df = df.rename({"reviewerID": "user_id", "asin": "item_id", "overall": "rating",
                "unixReviewTime": "ts", "reviewText": "review"})
df = df.with_row_index("row").sort("ts", "row").unique(["user_id", "item_id"], keep="last")
while True:
    kept = df.filter((pl.len().over("user_id") >= k) & (pl.len().over("item_id") >= k))
    if kept.height == df.height:
        break
    df = kept
users = df.select(pl.col("user_id").unique().sort()).with_row_index("user_idx")
items = df.select(pl.col("item_id").unique().sort()).with_row_index("item_idx")
pos = (pl.struct("user_id", "item_id").hash(seed=42) % 1_000_000).cast(pl.Float64) / 1_000_000
df = (df.join(users, on="user_id").join(items, on="item_id")
      .sort("user_idx", "ts", "item_idx")
      .select("user_id", "item_id", pl.col("user_idx", "item_idx").cast(pl.Int32), "rating", "ts",
              (pl.col("rating") >= 4).cast(pl.Int8).alias("label"),
              pl.when(pos < 0.8).then(pl.lit("train")).when(pos < 0.9).then(pl.lit("valid"))
              .otherwise(pl.lit("test")).alias("split"), "review"))
m = pl.read_ndjson(meta, schema={"asin": pl.String, "title": pl.String, "brand": pl.String,
                                 "price": pl.String, "category": pl.List(pl.String)})
m = m.unique("asin", keep="first").select(
    pl.col("asin").alias("item_id"), "title", pl.col("category").list.join(" | ").alias("categories"),
    "brand", pl.col("price").str.replace_all(r"[$,]", "").str.split(" - ").list.first()
    .cast(pl.Float64, strict=False).alias("price"))
items = items.with_columns(pl.col("item_idx").cast(pl.Int32)).join(m, on="item_id", how="left").sort("item_idx")
words = (pl.col("review").str.replace_all(r"\s+", " ").str.strip_chars().str.split(" ")
         .list.head(8).list.join(" ").fill_null(""))
phrase = (pl.col("title").fill_null("an item")
          + pl.when(pl.col("rating") >= 4).then(pl.lit(": liked")).otherwise(pl.lit(": disliked"))
          + pl.when(words.str.len_chars() > 0).then(pl.lit(' "') + words + pl.lit('"')).otherwise(pl.lit("")))
behaviour = (df.filter(pl.col("split") == "train").join(items.select("item_idx", "title"), on="item_idx",
                                                         how="left", maintain_order="left")
             .group_by("user_idx", maintain_order=True)
             .agg(pl.first("user_id"), phrase.alias("items"))
             .with_columns(pl.col("items").list.join("; ").alias("text")))
df.write_parquet(f"{out}/interactions.parquet")
items.write_parquet(f"{out}/items.parquet")
behaviour.write_parquet(f"{out}/behaviour.parquet")
split = dict(df.group_by("split").len().iter_rows())
print(json.dumps({"interactions": df.height, "users": users.height, "items": items.height,
                  "split": {s: split.get(s, 0) for s in ("train", "valid", "test")}}))
'''

DUCKDB_PIPELINE = r'''
import json, sys
import duckdb

reviews, meta, out, k, memory = sys.argv[1], sys.argv[2], sys.argv[3], 5, sys.argv[4]
con = duckdb.connect()
con.execute(f"SET memory_limit = '{memory}'")  # above it DuckDB spills to disk
con.execute(f"""
CREATE TABLE r AS
SELECT reviewerID AS user_id, asin AS item_id, overall::FLOAT AS rating, unixReviewTime AS ts,
       reviewText AS review
FROM read_json('{reviews}', format = 'newline_delimited',
               columns = {{reviewerID: 'VARCHAR', asin: 'VARCHAR', overall: 'DOUBLE',
                          unixReviewTime: 'BIGINT', reviewText: 'VARCHAR'}})
QUALIFY row_number() OVER (PARTITION BY user_id, item_id ORDER BY ts DESC) = 1""")
while con.execute(f"""
DELETE FROM r
WHERE user_id IN (SELECT user_id FROM r GROUP BY user_id HAVING count(*) < {k})
   OR item_id IN (SELECT item_id FROM r GROUP BY item_id HAVING count(*) < {k})""").fetchone()[0]:
    pass
con.execute("""CREATE TABLE u AS SELECT user_id, (row_number() OVER (ORDER BY user_id) - 1)::INT AS user_idx
               FROM (SELECT DISTINCT user_id FROM r)""")
con.execute("""CREATE TABLE i AS SELECT item_id, (row_number() OVER (ORDER BY item_id) - 1)::INT AS item_idx
               FROM (SELECT DISTINCT item_id FROM r)""")
con.execute("""
CREATE TABLE inter AS
SELECT user_id, item_id, user_idx, item_idx, rating, ts, (rating >= 4)::TINYINT AS label,
       CASE WHEN h < 0.8 THEN 'train' WHEN h < 0.9 THEN 'valid' ELSE 'test' END AS split, review
FROM (SELECT *, (hash(user_id, item_id) % 1000000) / 1000000.0 AS h FROM r)
JOIN u USING (user_id) JOIN i USING (item_id)""")
con.execute(f"""COPY (SELECT * FROM inter ORDER BY user_idx, ts, item_idx)
               TO '{out}/interactions.parquet' (FORMAT parquet, COMPRESSION zstd)""")
con.execute(f"""
CREATE TABLE items AS
SELECT item_id, item_idx, title, array_to_string(category, ' | ') AS categories, brand,
       TRY_CAST(regexp_replace(split_part(price, ' - ', 1), '[$,]', '', 'g') AS DOUBLE) AS price
FROM i LEFT JOIN (
    SELECT asin AS item_id, title, category, brand, price
    FROM read_json('{meta}', format = 'newline_delimited',
                   columns = {{asin: 'VARCHAR', title: 'VARCHAR', brand: 'VARCHAR',
                              price: 'VARCHAR', category: 'VARCHAR[]'}})
    QUALIFY row_number() OVER (PARTITION BY asin) = 1) USING (item_id)""")
con.execute(f"COPY (SELECT * FROM items ORDER BY item_idx) TO '{out}/items.parquet' (FORMAT parquet, COMPRESSION zstd)")
con.execute(f"""
COPY (
  SELECT any_value(user_id) AS user_id, user_idx, string_agg(phrase, '; ' ORDER BY ts, item_idx) AS text
  FROM (
    SELECT user_id, user_idx, ts, inter.item_idx,
           coalesce(title, 'an item') || CASE WHEN rating >= 4 THEN ': liked' ELSE ': disliked' END
           || CASE WHEN w <> '' THEN ' "' || w || '"' ELSE '' END AS phrase
    FROM (SELECT *, array_to_string(string_split(trim(regexp_replace(coalesce(review, ''), '\s+', ' ', 'g')), ' ')[1:8], ' ') AS w
          FROM inter WHERE split = 'train') inter
    LEFT JOIN items USING (item_idx))
  GROUP BY user_idx ORDER BY user_idx
) TO '{out}/behaviour.parquet' (FORMAT parquet, COMPRESSION zstd)""")
count = lambda sql: con.execute(sql).fetchone()[0]
print(json.dumps({"interactions": count("SELECT count(*) FROM inter"),
                  "users": count("SELECT count(*) FROM u"), "items": count("SELECT count(*) FROM i")}))
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


def measure(cmd: list[str], env: dict[str, str], limit_gib: float,
            limit_s: float | None = None) -> dict[str, Any]:
    """Wall and CPU seconds and peak memory of one command: ``peak_rss_mib`` sums the
    process tree (psutil, polled every 20 ms); ``maxrss_mib`` is the kernel's exact peak of
    its largest process (``wait4``). A tree above ``limit_gib`` is killed and reported as
    out of memory, so a peer that would need more than the box has cannot take it down;
    one still running after ``limit_s`` is killed and reported as stopped, so the other
    tools' figures still come out. A peer's last line of output is its counts (JSON)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as stdout:
        proc = subprocess.Popen(cmd, env=env, stdout=stdout, stderr=subprocess.PIPE,
                                start_new_session=True)
        root = psutil.Process(proc.pid)
        peak = 0
        killed: dict[str, float] | None = None
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            try:
                tree = [root, *root.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree))
            except psutil.Error:
                pass
            if killed is None:
                if peak > limit_gib * 2**30:
                    killed = {"out_of_memory_at_gib": limit_gib}
                elif limit_s is not None and time.perf_counter() - started > limit_s:
                    killed = {"stopped_at_s": limit_s}
                if killed is not None:
                    os.killpg(proc.pid, signal.SIGKILL)
            time.sleep(0.02)
        wall = time.perf_counter() - started
        stdout.seek(0)
        lines = stdout.read().decode(errors="replace").strip().splitlines()
    stderr = proc.stderr.read().decode(errors="replace")
    if killed is not None:
        return {**killed, "wall_s": round(wall, 2), "peak_rss_mib": round(peak / 2**20, 1)}
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{cmd[:4]} failed ({code}):\n{stderr[-3000:]}")
    return {"wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_mib": round(peak / 2**20, 1), "maxrss_mib": round(usage.ru_maxrss / 1024, 1),
            "counts": _counts(lines[-1] if lines else "")}


def _counts(line: str) -> dict[str, Any] | None:
    try:
        return json.loads(line)
    except ValueError:
        return None


def commands(tool: str, reviews: Path, meta: Path, out: Path, folder: Path,
             limit_gib: float) -> list[str]:
    if tool == "userip":
        return [sys.executable, "-m", "userip.cli", "prepare", "--source", "amazon2018",
                "--reviews", str(reviews), "--meta", str(meta), "--out", str(out)]
    script = folder / f"{tool}_pipeline.py"
    script.write_text({"polars": POLARS_PIPELINE, "duckdb": DUCKDB_PIPELINE}[tool])
    extra = [f"{0.8 * limit_gib:.1f}GB"] if tool == "duckdb" else []
    return [sys.executable, str(script), str(reviews), str(meta), str(out), *extra]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--tools", default="userip,polars,duckdb",
                        help="comma-separated, run in this order each repeat")
    parser.add_argument("--gzip", action="store_true", help="generate the dump gzip-compressed")
    parser.add_argument("--dump", type=Path,
                        help="a folder holding reviews.json[.gz] and meta.json[.gz] from an "
                             "earlier --keep run: used instead of generating one")
    parser.add_argument("--memory-limit-gib", type=float, default=14.0,
                        help="a run whose process tree exceeds this is killed and reported "
                             "out of memory (default 14, on a 24 GiB box)")
    parser.add_argument("--time-limit-s", type=float,
                        help="a run still going after this many seconds is killed and "
                             "reported as stopped (default: none)")
    parser.add_argument("--workdir", type=Path,
                        help="where to write the dump and outputs (default: the system temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    args = parser.parse_args(argv)
    tools = args.tools.split(",")

    folder = Path(tempfile.mkdtemp(prefix="userip-bench-", dir=args.workdir))
    # The checkout's packages first, so the benchmark measures this tree's code.
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    try:
        started = time.perf_counter()
        if args.dump:
            reviews, meta = (next(args.dump.glob(f"{name}.json*")) for name in ("reviews", "meta"))
        else:
            reviews, meta = generate(args.rows, folder, gz=args.gzip)
        generated_s = time.perf_counter() - started
        runs: dict[str, list[dict[str, Any]]] = {tool: [] for tool in tools}
        for repeat in range(args.repeats):
            for tool in tools:
                out = folder / f"{tool}-out-{repeat}"
                if tool != "userip":
                    out.mkdir()
                runs[tool].append(measure(
                    commands(tool, reviews, meta, out, folder, args.memory_limit_gib), env,
                    args.memory_limit_gib, args.time_limit_s))
                if tool == "userip":
                    runs[tool][-1]["counts"] = _userip_counts(out)
                shutil.rmtree(out, ignore_errors=True)
        report: dict[str, Any] = {
            "rows": args.rows,
            "reviews_file": reviews.name,
            "reviews_mib": round(reviews.stat().st_size / 2**20, 1),
            "generate_s": round(generated_s, 1),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
                       f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM",
        }
        for tool, results in runs.items():
            done = [r for r in results if "cpu_s" in r]
            entry: dict[str, Any] = {"runs": results}
            if done:
                wall = statistics.median(r["wall_s"] for r in done)
                entry.update(median_wall_s=wall, rows_per_s=round(args.rows / wall),
                             median_cpu_s=statistics.median(r["cpu_s"] for r in done),
                             peak_rss_mib=max(r["peak_rss_mib"] for r in done))
            report[tool] = entry
        counts = [json.dumps({k: r["counts"][k] for k in ("interactions", "users", "items")})
                  for results in runs.values() for r in results if r.get("counts")]
        report["counts_agree"] = len(set(counts)) == 1
        if "userip" in runs and "median_wall_s" in report["userip"]:
            u = report["userip"]
            for peer in (t for t in tools if t != "userip" and "median_wall_s" in report[t]):
                p = report[peer]
                report[f"wall_ratio_userip_over_{peer}"] = round(u["median_wall_s"] / p["median_wall_s"], 3)
                report[f"cpu_ratio_userip_over_{peer}"] = round(u["median_cpu_s"] / p["median_cpu_s"], 3)
                report[f"rss_ratio_userip_over_{peer}"] = round(u["peak_rss_mib"] / p["peak_rss_mib"], 3)
        report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        print(json.dumps(report, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


def _userip_counts(out: Path) -> dict[str, Any]:
    stats = json.loads((out / "stats.json").read_text())
    return {k: stats[k] for k in ("interactions", "users", "items", "split")}


if __name__ == "__main__":
    sys.exit(main())
