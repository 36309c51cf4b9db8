"""Amazon 2014 / 2018 / 2023 readers on fixtures in each release's exact format, bad lines
of every kind included; also the shared JSON-lines engine (gzip, chunking, limits)."""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path

import polars as pl
import pytest

from tests.readers_support import read, reasons, write_lines
from userip.cli import main as cli_main
from userip.config import PrepareConfig
from userip.dataprep.pipeline import prepare
from userip.dataprep.readers import jsonl
from userip.dataprep.readers.base import INTERACTION_SCHEMA
from userip.errors import InputError


def review2018(user: str, item: str, rating: float, ts: int, text: str | None = None) -> dict:
    """One review line as the 2018 dump writes it."""
    record = {"overall": rating, "vote": "12", "verified": True, "reviewTime": "09 13, 2009",
              "reviewerID": user, "asin": item, "style": {"Format:": " Hardcover"},
              "reviewerName": "J. Doe", "summary": "Fine", "unixReviewTime": ts}
    if text is not None:
        record["reviewText"] = text
    return record


REVIEWS_2018: list[dict | str | bytes] = [
    review2018("A1", "B1", 5.0, 1252800000, "Great &amp; sturdy<br/>Would buy again"),  # 1
    review2018("A2", "B1", 4.0, 1300000000),                                          # 2
    {**review2018("A3", "B2", 1.0, 1), "overall": "five"},                            # 3
    {k: v for k, v in review2018("A4", "B2", 2.0, 1).items() if k != "reviewerID"},   # 4
    '{"reviewerID": "A4", "asin": "B2", "ove',                                        # 5
    "this is not json",                                                               # 6
    b'{"reviewerID": "A\xff\xfe", "asin": "B2", "overall": 3.0, "unixReviewTime": 5}',  # 7
    "",                                                                               # 8
    "[1, 2]",                                                                         # 9
    review2018("A5", "B3", 7.0, 1),                                                   # 10
    '{"reviewerID": "A6", "asin": "B3", "overall": NaN, "unixReviewTime": 1}',        # 11
    review2018("A3", "B9", 3.0, 1400000000, "no meta for this item"),                 # 12
    {k: v for k, v in review2018("A7", "B2", 2.0, 0).items() if k != "unixReviewTime"},  # 13
    {"reviewerID": "A8", "asin": "B2", "overall": 2.0},                               # 14
    {"reviewerID": "A8", "asin": "B2", "overall": 2.0, "unixReviewTime": "abc"},      # 15
]
REVIEW_REJECTS_2018 = {
    3: "field 'overall': invalid value 'five'",
    4: "field 'reviewerID': missing",
    5: "malformed line",
    6: "malformed line",
    7: "invalid UTF-8 at byte offset 17",
    9: "not a JSON object",
    10: "field 'overall': invalid value '7",
    11: "malformed line: NaN is not valid JSON",
    14: "field 'unixReviewTime': missing",
    15: "field 'unixReviewTime': invalid value 'abc'",
}

META_2018: list[dict | str] = [
    {"asin": "B1", "title": '<span class="a-size-large">Sturdy Mug &amp; Lid</span>',
     "price": "$12.99", "brand": "Acme", "also_buy": ["B2"], "rank": "1,234 in Kitchen (",
     "category": ["Home &amp; Kitchen", "</span></span></span>", "Mugs", "Mugs"],
     "description": ["<p>Holds <b>12 oz</b></p>", "Dishwasher&nbsp;safe "]},
    {"asin": "B2", "title": "var aPageStart = (new Date()).getTime();",
     "price": "$3.99 - $8.99", "category": "Books", "description": []},
    {"asin": "B3", "title": "Lamp", "price": ".a-box-inner{background-color:#fff}",
     "category": [], "brand": ""},
    {"title": "a line without its asin", "price": "$1.00"},
    {"asin": "B4", "title": "Sofa", "price": "$1,299.00"},
    {"asin": "B5", "title": "Free thing", "price": ""},
    '{"asin": "B6", "title": "cut short',
]


def amazon2018(tmp_path: Path, reviews: list = REVIEWS_2018, meta: list = META_2018,
               gz: bool = False) -> tuple[Path, Path]:
    suffix = ".json.gz" if gz else ".json"
    return (write_lines(tmp_path / f"reviews{suffix}", reviews, gz=gz),
            write_lines(tmp_path / f"meta{suffix}", meta, gz=gz))


@pytest.fixture(params=["one chunk", "tiny chunks"])
def chunking(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run a test with the default chunk size and again with chunks of a few lines, so
    line numbering and bad-line isolation are checked across chunk boundaries."""
    if request.param == "tiny chunks":
        monkeypatch.setattr(jsonl, "CHUNK_BYTES", 300)


@pytest.mark.usefixtures("chunking")
def test_amazon2018_keeps_good_rows_and_logs_each_bad_line(tmp_path: Path) -> None:
    reviews, meta = amazon2018(tmp_path)
    result = read(tmp_path, source="amazon2018", reviews=reviews, meta=meta)

    rows = result.interactions.sort("user_id").rows()
    assert rows == [
        ("A1", "B1", 5.0, 1252800000, "Great & sturdy Would buy again"),
        ("A2", "B1", 4.0, 1300000000, None),
        ("A3", "B9", 3.0, 1400000000, "no meta for this item"),
        ("A7", "B2", 2.0, 1252800000, None),  # reviewTime "09 13, 2009" stands in
    ]
    got = reasons(result, reviews)
    assert sorted(got) == sorted(REVIEW_REJECTS_2018)
    for line, reason in REVIEW_REJECTS_2018.items():
        assert got[line].startswith(reason), (line, got[line])
    assert result.log.summary()[str(reviews)] == {"lines": 15, "rejected": 10}
    assert sorted(result.users["user_id"]) == ["A1", "A2", "A3", "A7"]
    assert all("raw" in r for r in result.rejects)


@pytest.mark.usefixtures("chunking")
def test_amazon2018_meta_normalised(tmp_path: Path) -> None:
    reviews, meta = amazon2018(tmp_path)
    result = read(tmp_path, source="amazon2018", reviews=reviews, meta=meta)
    items = {r["item_id"]: r for r in result.items.to_dicts()}

    assert items["B1"] == {
        "item_id": "B1", "title": "Sturdy Mug & Lid", "categories": "Home & Kitchen | Mugs",
        "brand": "Acme", "price": 12.99, "description": "Holds 12 oz Dishwasher safe",
    }
    assert items["B2"]["title"] is None  # scraped JavaScript, not a title
    assert items["B2"]["price"] == 3.99  # low end of a range
    assert items["B2"]["categories"] == "Books" and items["B2"]["description"] is None
    assert items["B3"]["price"] is None and items["B3"]["brand"] is None  # CSS junk price
    assert items["B4"]["price"] == 1299.0
    assert items["B5"]["price"] is None
    assert sorted(items) == ["B1", "B2", "B3", "B4", "B5"]
    got = reasons(result, meta)
    assert sorted(got) == [4, 7] and got[4] == "field 'asin': missing"
    assert got[7].startswith("malformed line")


def test_amazon2014_python_literal_meta_and_review_time(tmp_path: Path) -> None:
    reviews = write_lines(tmp_path / "reviews_Toys.json", [
        {"reviewerID": "A2SUAM1J3GNN3B", "asin": "0000031852", "reviewerName": "J. McDonald",
         "helpful": [2, 3], "reviewText": "I bought this for my daughter &amp; she loves it.",
         "overall": 5.0, "summary": "Heavenly", "unixReviewTime": 1393545600,
         "reviewTime": "02 28, 2014"},
        {"reviewerID": "A14VAT5EAX3D9S", "asin": "0000032069", "helpful": [0, 0],
         "reviewText": "Nice", "overall": 4.0, "summary": "ok", "reviewTime": "9 3, 2009"},
        {"reviewerID": "A14VAT5EAX3D9S", "asin": "0000031852", "helpful": [0, 0],
         "overall": 4.0, "reviewTime": "13 45, 2009"},
    ])
    pwned = tmp_path / "PWNED"
    meta = write_lines(tmp_path / "meta_Toys.json", [
        "{'asin': '0000031852', 'title': 'Girls Ballet Tutu Zebra Hot Pink', 'price': 3.17, "
        "'imUrl': 'http://ecx.images-amazon.com/images/I/51fAmVkTbyL._SY300_.jpg', "
        "'related': {'also_bought': ['B00JHONN1S'], 'bought_together': ['B002BZX8Z6']}, "
        "'salesRank': {'Toys & Games': 211836}, "
        "'categories': [['Sports & Outdoors', 'Other Sports', 'Dance']], 'brand': 'Coxlures'}",
        "{'asin': '0000032069', 'title': \"Adult Ballet Tutu Cheetah's Pink\", 'price': 7.89, "
        "'categories': [['Clothing, Shoes & Jewelry', 'Women'], ['Clothing, Shoes & Jewelry', "
        "'Novelty, Costumes & More', 'Costumes & Accessories']], "
        "'description': 'A tutu for grown-ups.'}",
        f"{{'asin': 'EVIL', 'title': __import__('os').system('touch {pwned}')}}",
        "{'asin': '0000031909', 'title': 'Girls",
        "{'asin': '0000031895', 'categories': [[]], 'salesRank': {}}",
    ])
    result = read(tmp_path, source="amazon2014", reviews=reviews, meta=meta)

    assert result.interactions.sort("ts").rows() == [
        ("A14VAT5EAX3D9S", "0000032069", 4.0, 1251936000, "Nice"),
        ("A2SUAM1J3GNN3B", "0000031852", 5.0, 1393545600,
         "I bought this for my daughter & she loves it."),
    ]
    assert reasons(result, reviews) == {3: "field 'unixReviewTime': invalid value '13 45, 2009'"}
    items = {r["item_id"]: r for r in result.items.to_dicts()}
    assert items["0000031852"] == {
        "item_id": "0000031852", "title": "Girls Ballet Tutu Zebra Hot Pink",
        "categories": "Sports & Outdoors | Other Sports | Dance", "brand": "Coxlures",
        "price": 3.17, "description": None,
    }
    assert items["0000032069"]["title"] == "Adult Ballet Tutu Cheetah's Pink"
    assert items["0000032069"]["categories"] == (
        "Clothing, Shoes & Jewelry | Women | Novelty, Costumes & More | Costumes & Accessories")
    assert items["0000032069"]["description"] == "A tutu for grown-ups."
    assert items["0000031895"]["categories"] is None
    meta_rejects = reasons(result, meta)
    assert sorted(meta_rejects) == [3, 4]
    assert all(r.startswith("malformed line") for r in meta_rejects.values())
    assert not pwned.exists()  # the literal was parsed, never evaluated


def test_amazon2023_parent_asin_and_millisecond_times(tmp_path: Path) -> None:
    reviews = write_lines(tmp_path / "All_Beauty.jsonl", [
        {"rating": 5.0, "title": "Such a lovely scent", "images": [],
         "text": "This spray is really nice.<br />Smells great", "asin": "B00YQ6X8EO",
         "parent_asin": "B00YQ6X8EP", "user_id": "AGKHLEW2SOWHNMFQIJGBECAF7INQ",
         "timestamp": 1588687728923, "helpful_vote": 0, "verified_purchase": True},
        {"rating": 3.0, "title": "ok", "text": "", "asin": "B1", "parent_asin": "P1",
         "user_id": "U2", "timestamp": 1600000000999, "helpful_vote": 2,
         "verified_purchase": False, "images": [{"small_image_url": "x"}]},
        {"rating": 4.0, "text": "x", "asin": "B2", "parent_asin": "P2", "user_id": "U3",
         "timestamp": "yesterday"},
        {"rating": 4.0, "text": "x", "asin": "B2", "user_id": "U3", "timestamp": 1600000000000},
    ])
    meta = write_lines(tmp_path / "meta_All_Beauty.jsonl", [
        {"main_category": "All Beauty", "title": "Howard LC0008 Leather Conditioner, 8-Ounce",
         "average_rating": 4.8, "rating_number": 10, "features": [], "description": [],
         "price": None, "images": [{"hi_res": None}], "videos": [], "store": "Howard Products",
         "categories": [], "details": {"Package Dimensions": "7.1 x 5.5 x 3 inches"},
         "parent_asin": "B00YQ6X8EP", "bought_together": None},
        {"main_category": "All Electronics", "title": "Headphones", "price": 24.95,
         "store": "Sonic", "categories": ["Electronics", "Headphones"],
         "description": ["Great sound.", "Light."], "parent_asin": "P1"},
        {"main_category": "All Beauty", "title": "Brush", "price": "None", "parent_asin": "P2",
         "categories": [], "store": None},
    ])
    result = read(tmp_path, source="amazon2023", reviews=reviews, meta=meta)

    assert result.interactions.sort("ts").rows() == [
        ("AGKHLEW2SOWHNMFQIJGBECAF7INQ", "B00YQ6X8EP", 5.0, 1588687728,
         "This spray is really nice. Smells great"),
        ("U2", "P1", 3.0, 1600000000, None),
    ]
    assert reasons(result, reviews) == {3: "field 'timestamp': invalid value 'yesterday'",
                                        4: "field 'parent_asin': missing"}
    items = {r["item_id"]: r for r in result.items.to_dicts()}
    assert items["B00YQ6X8EP"] == {
        "item_id": "B00YQ6X8EP", "title": "Howard LC0008 Leather Conditioner, 8-Ounce",
        "categories": "All Beauty", "brand": "Howard Products", "price": None,
        "description": None,
    }
    assert items["P1"]["categories"] == "Electronics | Headphones"
    assert items["P1"]["price"] == 24.95 and items["P1"]["description"] == "Great sound. Light."
    assert items["P2"]["price"] is None and items["P2"]["brand"] is None


def test_gzip_inputs_read_like_plain_ones(tmp_path: Path) -> None:
    plain = read(tmp_path / "p", source="amazon2018", **_paths(amazon2018(_dir(tmp_path / "p"))))
    packed = read(tmp_path / "g", source="amazon2018",
                  **_paths(amazon2018(_dir(tmp_path / "g"), gz=True)))
    assert packed.interactions.equals(plain.interactions)
    assert packed.items.equals(plain.items)
    assert [(r["line"], r["reason"]) for r in packed.rejects] == [
        (r["line"], r["reason"]) for r in plain.rejects]


def _dir(path: Path) -> Path:
    path.mkdir()
    return path


def _paths(pair: tuple[Path, Path]) -> dict[str, Path]:
    return {"reviews": pair[0], "meta": pair[1]}


def _numbered_reviews(n: int) -> list[dict]:
    return [review2018(f"U{i:03d}", f"I{i % 7}", 1.0 + i % 5, 1_300_000_000 + i,
                       "words " * (i % 40)) for i in range(n)]


@pytest.mark.usefixtures("chunking")
def test_truncated_gzip_keeps_complete_lines_and_logs_one_reject(tmp_path: Path) -> None:
    whole = gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in _numbered_reviews(400)))
    cut = whole[: len(whole) * 3 // 5]
    reviews = tmp_path / "reviews.json.gz"
    reviews.write_bytes(cut)
    complete = zlib.decompressobj(wbits=31).decompress(cut).count(b"\n")
    assert 0 < complete < 400

    result = read(tmp_path, source="amazon2018", reviews=reviews)
    assert result.interactions["user_id"].to_list() == [f"U{i:03d}" for i in range(complete)]
    assert list(reasons(result, reviews).items()) == [
        (complete + 1, "truncated gzip: the file ends inside the compressed stream")]


def test_concatenated_gzip_members_and_trailing_garbage(tmp_path: Path) -> None:
    lines = [json.dumps(r).encode() + b"\n" for r in _numbered_reviews(10)]
    reviews = tmp_path / "reviews.json.gz"
    reviews.write_bytes(gzip.compress(b"".join(lines[:4])) + gzip.compress(b"".join(lines[4:])))
    assert read(tmp_path, source="amazon2018", reviews=reviews).interactions.height == 10

    reviews.write_bytes(gzip.compress(b"".join(lines)) + b"not gzip")
    result = read(tmp_path, source="amazon2018", reviews=reviews)
    assert result.interactions.height == 10
    assert reasons(result, reviews) == {11: "unexpected bytes after the end of the gzip stream"}


def test_overlong_line_is_skipped_without_losing_the_next(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jsonl, "CHUNK_BYTES", 256)
    monkeypatch.setattr(jsonl, "MAX_LINE_BYTES", 1000)
    records = _numbered_reviews(6)
    records[2]["reviewText"] = "x" * 5000
    records[4]["overall"] = "bad"
    reviews = write_lines(tmp_path / "reviews.json", records)
    result = read(tmp_path, source="amazon2018", reviews=reviews)
    assert result.interactions["user_id"].to_list() == ["U000", "U001", "U003", "U005"]
    assert reasons(result, reviews) == {3: "line longer than 1,000 bytes",
                                        5: "field 'overall': invalid value 'bad'"}


def test_empty_and_blank_files_give_empty_frames(tmp_path: Path) -> None:
    reviews = tmp_path / "reviews.json"
    reviews.write_bytes(b"")
    meta = write_lines(tmp_path / "meta.json.gz", [], gz=True)
    result = read(tmp_path, source="amazon2018", reviews=reviews, meta=meta)
    assert result.interactions.height == 0 and result.items.height == 0
    assert result.interactions.schema == pl.Schema(INTERACTION_SCHEMA)
    reviews.write_bytes(b"\n\n  \n")
    assert read(tmp_path, source="amazon2018", reviews=reviews).rejects == []


def test_missing_file_and_wrong_file_are_input_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json.gz"
    with pytest.raises(InputError, match="reviews file not found") as err:
        read(tmp_path, source="amazon2018", reviews=missing)
    assert str(missing) in str(err.value)

    reviews, meta = amazon2018(tmp_path)
    with pytest.raises(InputError) as err:  # the metadata file passed as reviews
        read(tmp_path, source="amazon2018", reviews=meta)
    message = str(err.value)
    assert str(meta) in message
    assert "'reviewerID'" in message and "'overall'" in message and "'asin'" not in message


def test_cli_reports_a_missing_file_in_one_line(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "reviews.json"
    code = cli_main(["prepare", "--source", "amazon2018", "--reviews", str(missing),
                     "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and str(missing) in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_prepare_end_to_end_counts_rejects_and_enforces_the_ratio(tmp_path: Path) -> None:
    reviews, meta = amazon2018(tmp_path)
    stats = prepare(PrepareConfig(source="amazon2018", reviews=reviews, meta=meta, min_core=1,
                                  max_reject_ratio=1.0), tmp_path / "out")
    assert stats["raw_interactions"] == 4 and stats["rejected_lines"] == 10 + 2
    # B9 has no metadata and B2's title was scraped junk: both kept, with a null title.
    assert stats["items_missing_meta"] == 2
    items = pl.read_parquet(tmp_path / "out" / "items.parquet")
    assert items.filter(pl.col("title").is_null())["item_id"].sort().to_list() == ["B2", "B9"]
    logged = (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()
    assert len(logged) == 12

    with pytest.raises(InputError, match="first bad line 3: field 'overall'") as err:
        prepare(PrepareConfig(source="amazon2018", reviews=reviews, min_core=1),
                tmp_path / "strict")
    assert str(reviews) in str(err.value)
    assert not (tmp_path / "strict").exists()
