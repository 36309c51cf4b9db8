"""Yelp Open Dataset reader on review/business/user fixtures in the dump's exact format."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.readers_support import read, reasons, write_lines
from userip.errors import InputError


def review(rid: str, user: str, business: str, stars: float, date: str, text: str = "ok") -> dict:
    return {"review_id": rid, "user_id": user, "business_id": business, "stars": stars,
            "useful": 0, "funny": 0, "cool": 0, "text": text, "date": date}


REVIEWS = [
    review("r1", "u1", "b1", 3.0, "2018-07-07 22:09:11", "Tasty &amp; cheap.\nWill return"),  # 1
    review("r2", "u2", "b1", 5.0, "2012-01-03 15:28:18"),                                   # 2
    review("r3", "u1", "b2", 4.0, "2014-02-05"),  # 3: date-only form of older dumps
    {**review("r4", "u3", "b2", 1.0, "2015-01-04 00:01:03"), "stars": "five"},               # 4
    {k: v for k, v in review("r5", "u3", "b2", 1.0, "2015-01-04 00:01:03").items()
     if k != "business_id"},                                                                 # 5
    review("r6", "u3", "b3", 2.0, "2018-13-45 00:00:00"),                                   # 6
    review("r7", "u3", "b9", 2.0, "2016-05-01 10:00:00"),  # 7: business not in business.json
    '{"review_id": "r8", "user_id": "u4", "business_id": "b1", "stars": 4.0, "te',           # 8
]

BUSINESS = [
    {"business_id": "b1", "name": "Oskar Blues Taproom", "address": "921 Pearl St",
     "city": "Boulder", "state": "CO", "postal_code": "80302", "latitude": 40.0175,
     "longitude": -105.2833, "stars": 4.0, "review_count": 86, "is_open": 1,
     "attributes": {"RestaurantsPriceRange2": "2", "BusinessParking": "{'garage': False}"},
     "categories": "Gastropubs, Food, Beer Gardens, Restaurants, Bars, American (Traditional)",
     "hours": {"Monday": "11:0-23:0"}},
    {"business_id": "b2", "name": "Flying Elephants at PDX", "city": "Portland", "state": "OR",
     "stars": 4.0, "attributes": None, "categories": None, "hours": None},
    {"business_id": "b3", "name": "The Reclaimory", "city": "Portland", "state": "OR",
     "categories": "Antiques,  Fashion, Used, Vintage & Consignment, Fashion", "stars": 4.5},
    {"name": "no id", "city": "Tucson", "state": "AZ"},
]

USERS = [
    {"user_id": "u1", "name": "Walker", "review_count": 585, "yelping_since": "2007-01-25 16:47:26",
     "useful": 7217, "funny": 1259, "cool": 5994, "elite": "2007", "friends": "u2, u3",
     "fans": 267, "average_stars": 3.91, "compliment_hot": 250},
    {"user_id": "u2", "name": "Daniel", "review_count": "lots", "yelping_since": "2009-01-25",
     "friends": "None", "fans": 3, "average_stars": 3.74},
    {"name": "no id", "review_count": 1},
]


def yelp(tmp_path: Path, gz_users: bool = False) -> dict[str, Path]:
    return {
        "reviews": write_lines(tmp_path / "yelp_academic_dataset_review.json", REVIEWS),
        "business": write_lines(tmp_path / "yelp_academic_dataset_business.json", BUSINESS),
        "users": write_lines(tmp_path / f"yelp_academic_dataset_user.json{'.gz' * gz_users}",
                             USERS, gz=gz_users),
    }


def test_yelp_reviews_dates_and_rejects(tmp_path: Path) -> None:
    files = yelp(tmp_path)
    result = read(tmp_path, source="yelp", **files)

    assert result.interactions.sort("ts").rows() == [
        ("u2", "b1", 5.0, 1325604498, "ok"),        # 2012-01-03 15:28:18 UTC
        ("u1", "b2", 4.0, 1391558400, "ok"),        # 2014-02-05 00:00:00 UTC
        ("u3", "b9", 2.0, 1462096800, "ok"),
        ("u1", "b1", 3.0, 1531001351, "Tasty & cheap.\nWill return"),
    ]
    got = reasons(result, files["reviews"])
    assert sorted(got) == [4, 5, 6, 8]
    assert got[4] == "field 'stars': invalid value 'five'"
    assert got[5] == "field 'business_id': missing"
    assert got[6] == "field 'date': invalid value '2018-13-45 00:00:00'"
    assert got[8].startswith("malformed line")
    assert result.log.summary()[str(files["reviews"])] == {"lines": 8, "rejected": 4}


def test_yelp_business_becomes_items(tmp_path: Path) -> None:
    files = yelp(tmp_path)
    result = read(tmp_path, source="yelp", **files)
    items = {r["item_id"]: r for r in result.items.to_dicts()}

    assert items["b1"] == {
        "item_id": "b1", "title": "Oskar Blues Taproom",
        "categories":
            "Gastropubs | Food | Beer Gardens | Restaurants | Bars | American (Traditional)",
        "brand": None, "price": None, "description": "Boulder, CO",
    }
    assert items["b2"]["categories"] is None
    assert items["b3"]["categories"] == "Antiques | Fashion | Used | Vintage & Consignment"
    assert sorted(items) == ["b1", "b2", "b3"]
    assert reasons(result, files["business"]) == {4: "field 'business_id': missing"}


@pytest.mark.parametrize("gz_users", [False, True])
def test_yelp_user_attributes(tmp_path: Path, gz_users: bool) -> None:
    files = yelp(tmp_path, gz_users=gz_users)
    result = read(tmp_path, source="yelp", **files)
    assert result.users.sort("user_id").rows(named=True) == [
        {"user_id": "u1", "review_count": 585, "fans": 267, "average_stars": pytest.approx(3.91),
         "yelping_since_year": 2007},
        {"user_id": "u2", "review_count": None, "fans": 3, "average_stars": pytest.approx(3.74),
         "yelping_since_year": 2009},
    ]
    assert reasons(result, files["users"]) == {3: "field 'user_id': missing"}


def test_yelp_without_user_file_derives_users_from_reviews(tmp_path: Path) -> None:
    files = yelp(tmp_path)
    result = read(tmp_path, source="yelp", reviews=files["reviews"], business=files["business"])
    assert sorted(result.users["user_id"]) == ["u1", "u2", "u3"]


def test_yelp_missing_or_wrong_files(tmp_path: Path) -> None:
    files = yelp(tmp_path)
    with pytest.raises(InputError, match="business file not found"):
        read(tmp_path, source="yelp", reviews=files["reviews"], business=tmp_path / "gone.json")
    with pytest.raises(InputError, match="'stars'") as err:  # user.json passed as reviews
        read(tmp_path, source="yelp", reviews=files["users"], business=files["business"])
    assert str(files["users"]) in str(err.value)
