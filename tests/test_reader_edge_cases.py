"""Reader input edge cases found by hand-made dumps: BOM, implausible future timestamps,
non-scalar ids, reject reasons that must not change from run to run."""

from __future__ import annotations

import json
import time

import pytest

from tests.readers_support import read, reasons, write_lines


def _review(user: object = "u1", item: object = "i1", ts: object = 1_400_000_000) -> dict:
    return {"reviewerID": user, "asin": item, "overall": 5.0, "unixReviewTime": ts}


@pytest.mark.parametrize("gz", [False, True])
def test_utf8_bom_does_not_cost_the_first_record(tmp_path, gz: bool) -> None:
    path = tmp_path / ("r.json.gz" if gz else "r.json")
    write_lines(path, [b"\xef\xbb\xbf" + json.dumps(_review("first")).encode(), _review("second")], gz=gz)
    got = read(tmp_path, source="amazon2014", reviews=path)
    assert got.rejects == []
    assert got.interactions["user_id"].to_list() == ["first", "second"]


def test_timestamps_after_tomorrow_are_rejected(tmp_path) -> None:
    now = int(time.time())
    path = write_lines(tmp_path / "r.json", [
        _review("ok", ts=now - 3600),
        _review("micro", ts=1_400_000_000_000_000),  # microseconds read as seconds: year ~46,000
        _review("soon", ts=now + 3 * 86_400),
    ])
    got = read(tmp_path, source="amazon2014", reviews=path)
    assert got.interactions["user_id"].to_list() == ["ok"]
    assert set(reasons(got, path)) == {2, 3}
    assert all("unixReviewTime" in r for r in reasons(got, path).values())


def test_yelp_dates_in_the_future_are_rejected(tmp_path) -> None:
    path = write_lines(tmp_path / "review.json", [
        {"user_id": "u", "business_id": "b", "stars": 4, "date": "2019-01-01 10:00:00"},
        {"user_id": "u", "business_id": "c", "stars": 4, "date": "2999-01-01 10:00:00"},
    ])
    got = read(tmp_path, source="yelp", reviews=path)
    assert got.interactions["item_id"].to_list() == ["b"]
    assert list(reasons(got, path)) == [2]


def test_list_and_object_ids_are_rejected_numbers_kept(tmp_path) -> None:
    path = write_lines(tmp_path / "r.json", [
        _review(["u1"]), _review({"id": "u1"}), _review("u1", ["i1"]), _review(12345),
    ])
    got = read(tmp_path, source="amazon2014", reviews=path)
    assert got.interactions["user_id"].to_list() == ["12345"]
    assert reasons(got, path) == {
        1: "field 'reviewerID': invalid value '[\"u1\"]'",
        2: "field 'reviewerID': invalid value '{\"id\": \"u1\"}'",
        3: "field 'asin': invalid value '[\"i1\"]'",
    }


def test_reject_reasons_are_the_same_every_run(tmp_path) -> None:
    """Python-literal meta with a bare name: ``ast`` names the node with its address."""
    meta = write_lines(tmp_path / "meta.json", ["{'asin': 'i1', 'title': foo}"])
    reviews = write_lines(tmp_path / "r.json", [_review()])
    runs = []
    for k in range(2):
        (tmp_path / str(k)).mkdir()
        runs.append(reasons(read(tmp_path / str(k), source="amazon2014", reviews=reviews,
                                 meta=meta), meta))
    assert runs[0] == runs[1] and " at 0x" not in runs[0][1]
    assert runs[0][1].startswith("malformed line: malformed node or string")
