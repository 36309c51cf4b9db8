"""Vectorised normalisers for raw dump fields, shared by the JSON-lines readers.

Every raw field arrives as text (``pl.String``: whatever JSON value the line held) or as a
list of texts (``pl.List(pl.String)``). Each helper returns an expression that is null when
the value is absent or unusable, so the engine in ``jsonl`` can reject a row whose required
column came out null and name the field that caused it.
"""

from __future__ import annotations

import html
import time

import polars as pl

# Joins list elements while they are cleaned as one string; never occurs in review dumps.
_UNIT_SEP = "\x1f"
_SCRIPT_OR_STYLE = r"(?is)<script\b.*?</script\s*>|<style\b.*?</style\s*>"
_TAG = r"</?[A-Za-z][^<>]*>"
# Whitespace worth rewriting: runs, and anything but a plain space (single spaces, by far
# the most common match of a bare \s+, are left alone, which makes the pass cheap).
_SPACES = r"\s\s+|[^\S ]"
# Markup that survives tag stripping in scraped Amazon 2018 fields: CSS rules, JavaScript.
_JUNK = r"(?i)getTime\(|\bvar\s+\w+\s*=|function\s*\(|\{[^{}]*:[^{}]*\}"
# "$12.99", "12.99", "$1,299.00", "$3.99 - $8.99" (a range: its low end is kept).
_PRICE = r"^\$?\s*([0-9][0-9,]*(?:\.[0-9]+)?)(?:\s*-\s*\$?\s*[0-9][0-9,]*(?:\.[0-9]+)?)?$"


def _strip_markup(values: pl.Series) -> pl.Series:
    """Drop script/style blocks and tags, then decode entities, touching only the values
    that hold a ``<`` (regexes) or an ``&`` (``html.unescape``): most text has neither."""
    out = values.clone()
    tagged = out.str.contains("<", literal=True).fill_null(False)
    if tagged.any():
        where = tagged.arg_true()
        out.scatter(where, out.gather(where).str.replace_all(_SCRIPT_OR_STYLE, " ")
                    .str.replace_all(_TAG, " ").str.strip_chars())
    coded = out.str.contains("&", literal=True).fill_null(False)
    if coded.any():
        where = coded.arg_true()
        out.scatter(where, [html.unescape(v) for v in out.gather(where).to_list()])
    return out


def _null_if_empty(expr: pl.Expr) -> pl.Expr:
    return expr.replace("", None)


def strip_html(expr: pl.Expr) -> pl.Expr:
    """Markup removed: script/style blocks and tags dropped, entities (``&amp;``) decoded."""
    return expr.map_batches(_strip_markup, return_dtype=pl.String, is_elementwise=True)


def review_text(field: str) -> pl.Expr:
    """Free text kept as written (line breaks and all), markup removed; empty is null."""
    return _null_if_empty(strip_html(pl.col(field)))


def short_text(field: str) -> pl.Expr:
    """A title or name: markup removed, whitespace collapsed; CSS/JS junk becomes null."""
    return pl.col(field).map_batches(_short_text, return_dtype=pl.String, is_elementwise=True)


def _short_text(values: pl.Series) -> pl.Series:
    clean = _strip_markup(values).str.replace_all(_SPACES, " ").str.strip_chars()
    unusable = (clean.str.contains(_JUNK) | (clean == "")).fill_null(False)
    return clean.scatter(unusable.arg_true(), None) if unusable.any() else clean


def text_list(texts: pl.Expr, sep: str) -> pl.Expr:
    """A list of texts cleaned element-wise and joined with ``sep`` (``" | "`` gives the
    categories form of ``ITEM_SCHEMA``); empty, junk and repeated elements dropped.

    The elements are cleaned while joined by a control character: one regex pass over a
    column is far cheaper than one per list.
    """
    joined = strip_html(texts.list.join(_UNIT_SEP)).str.replace_all(_SPACES, " ")
    parts = joined.str.split(_UNIT_SEP).list.eval(pl.element().str.strip_chars())
    kept = parts.list.eval(
        pl.element().filter((pl.element() != "") & ~pl.element().str.contains(_JUNK))
    ).list.unique(maintain_order=True)
    return _null_if_empty(kept.list.join(sep))


def split_list(field: str, sep: str) -> pl.Expr:
    """A separated string (Yelp's ``"Pizza, Restaurants"``) as a list of parts."""
    return pl.col(field).str.split(sep)


# Timestamps later than this are implausible (a millisecond value read as seconds lands in
# the year ~52,000 and would win the latest-per-pair dedupe). Fixed when the module is
# imported: each `userip` command and each Prefect flow run is a fresh process.
LATEST_PLAUSIBLE_TS = int(time.time()) + 86_400


def identifier(field: str) -> pl.Expr:
    """An id: a JSON string or number, surrounding whitespace stripped; empty is missing.
    A list or an object (its text starts with ``[`` or ``{``) is not an id."""
    value = pl.col(field).str.strip_chars()
    return _null_if_empty(pl.when(~value.str.contains(r"^[\[{]")).then(value))


def number(field: str, lo: float | None = None, hi: float | None = None) -> pl.Expr:
    """A finite number (optionally within ``[lo, hi]``) as Float64; anything else is null."""
    value = pl.col(field).cast(pl.Float64, strict=False)
    ok = value.is_finite()
    if lo is not None:
        ok &= value >= lo
    if hi is not None:
        ok &= value <= hi
    return pl.when(ok).then(value)


def unix_seconds(field: str, per_second: int = 1) -> pl.Expr:
    """An epoch timestamp in ``1/per_second`` units (1000 for milliseconds) as UTC seconds;
    null when later than ``LATEST_PLAUSIBLE_TS``."""
    return _plausible((number(field, lo=0) / per_second).floor().cast(pl.Int64, strict=False))


def date_seconds(text: pl.Expr, *formats: str) -> pl.Expr:
    """A naive date/time string, read as UTC, as epoch seconds; the first format that fits
    wins; null when later than ``LATEST_PLAUSIBLE_TS``."""
    raw = text.str.strip_chars()
    parsed = [raw.str.strptime(pl.Datetime("us"), f, strict=False) for f in formats]
    return _plausible(pl.coalesce(parsed).dt.epoch("s"))


def _plausible(seconds: pl.Expr) -> pl.Expr:
    return pl.when(seconds <= LATEST_PLAUSIBLE_TS).then(seconds)


def price(field: str) -> pl.Expr:
    """A price as Float64: numbers and ``"$12.99"`` strings; a range gives its low end."""
    low_end = pl.col(field).str.strip_chars().str.extract(_PRICE, 1)
    return low_end.str.replace_all(",", "", literal=True).cast(pl.Float64, strict=False)
