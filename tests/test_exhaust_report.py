"""The CSV writer on its own: chunked decryption, counts and a PII sort (no servers needed)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataflow import schema
from dataflow.exhaust import crypto, layout, report
from dataflow.exhaust.sources import Consent

SALT = "s-alt"


class Rows:
    """Enrolment rows of a test, fed to a ``report.Report`` by ``write``."""

    def __init__(self, layout_):
        self.layout = layout_
        self.rows: list[dict] = []

    def add(self, row: dict) -> None:
        self.rows.append(row)


def world(n: int, seed: int = 3):
    rng = random.Random(seed)
    rows = Rows(layout.load())
    consents, pii, bad = {}, {}, 0
    for i in range(n):
        uid = f"u{i:03d}"
        rows.add(
            {
                "user_id": uid,
                "program_name": "P",
                "pii_consent_required": i % 5 != 0,
                "user_locations": {"district_name": rng.choice(["B", "A", ""])},
            }
        )
        if rng.random() < 0.8:
            consents[uid] = Consent(rng.random() < 0.7, dt.datetime(2023, 1, 1 + i % 28))
        if rng.random() < 0.9:
            email = crypto.encrypt(f"{uid}@example.org", SALT) if i % 7 else "garbage"
            bad += email == "garbage" and i % 5 != 0 and uid in consents and consents[uid].active
            pii[uid] = (rng.choice(["Zed", "Amy", None]), None, email, crypto.encrypt("98", SALT))
    return rows, consents, pii, bad


class Asked:
    """The consents of a dict, asked for as ``sources.ConsentReader`` is."""

    def __init__(self, consents: dict) -> None:
        self.consents = consents
        self.asked: list[str] = []

    def ask(self, user_id: str) -> None:
        self.asked.append(user_id)

    def answers(self) -> dict:
        asked, self.asked = self.asked, []
        return {uid: self.consents[uid] for uid in asked if uid in self.consents}


def write(tmp_path, rows, consents, pii, name="r.csv", asked=None, limit=report.SORT_ROWS):
    """The CSV and counts; ``asked`` collects the user ids of each user-cache lookup."""

    def lookup(uids: list[str]) -> dict[str, tuple]:
        if asked is not None:
            asked.append(list(uids))
        return {uid: pii[uid] for uid in uids if uid in pii}

    counts = report.Counts()
    path = tmp_path / name
    runs = tmp_path / f"{name}.runs"
    runs.mkdir()
    built = report.Report(
        rows.layout,
        consents=Asked(consents),
        lookup=lookup,
        salt=SALT,
        counts=counts,
        folder=runs,
        limit=limit,
    )
    for row in rows.rows:
        built.add(schema.values(row))
    built.finish()
    built.write(path)
    # Every run is read once and removed as the merge finishes it.
    assert not list(runs.iterdir())
    return path.read_bytes().decode("utf-8"), counts


def test_chunked_writing_equals_one_chunk_and_counts_what_it_saw(tmp_path, monkeypatch):
    rows, consents, pii, bad = world(60)
    whole, counts = write(tmp_path, rows, consents, pii, "whole.csv")
    monkeypatch.setattr(report, "CHUNK", 7)
    asked: list[list[str]] = []
    chunked, chunked_counts = write(tmp_path, rows, consents, pii, "chunked.csv", asked)
    assert chunked == whole
    assert chunked_counts == counts
    active = {uid for uid, consent in consents.items() if consent.active}
    consenting = [
        r["user_id"] for r in rows.rows if r["pii_consent_required"] and r["user_id"] in active
    ]
    # The cache is asked chunk by chunk, for consenting users only, each of them once.
    assert len(asked) > 1
    assert all(0 < len(uids) <= 7 for uids in asked)
    assert sorted(uid for uids in asked for uid in uids) == sorted(consenting)
    assert counts.consenting == len(consenting)
    assert counts.missing_in_cache == sum(uid not in pii for uid in consenting)
    assert counts.undecryptable == bad > 0
    assert "garbage" not in whole
    for uid in consenting:
        if uid in pii and pii[uid][2] != "garbage":
            assert f"{uid}@example.org" in whole


@pytest.mark.parametrize("chunk", [4, 10_000])
def test_sorting_by_a_pii_field(tmp_path, monkeypatch, chunk):
    rows, consents, pii, _ = world(40)
    rows.layout = dataclasses.replace(rows.layout, sort=("username", "user_id"))
    monkeypatch.setattr(report, "CHUNK", chunk)
    text, counts = write(tmp_path, rows, consents, pii)
    body = [line.split(",") for line in text.split("\r\n")[1:-1]]
    names = [cells[1].strip("'") for cells in body]
    keys = [(name, cells[0]) for name, cells in zip(names, body, strict=True)]
    assert keys == sorted(keys)
    assert {"Amy", "Zed"} <= set(names)
    # The pass that builds the sort keys must not count twice: same counts as the default sort.
    plain_rows, *_ = world(40)
    _, plain_counts = write(tmp_path, plain_rows, consents, pii, "plain.csv")
    assert counts == plain_counts


@settings(max_examples=2000, deadline=None)
@given(
    st.one_of(
        st.datetimes(),
        st.datetimes(timezones=st.timezones()),
        st.datetimes(min_value=dt.datetime(1940, 1, 1), max_value=dt.datetime(1950, 1, 1)),
    )
)
def test_consent_date_is_the_day_in_india(when):
    aware = when if when.tzinfo else when.replace(tzinfo=dt.UTC)
    assert report.consent_date(when) == aware.astimezone(report.IST).strftime("%d/%m/%Y")


def test_only_young_collections_while_a_report_is_built():
    import gc

    from dataflow.exhaust.runner import young_collections_only

    before = gc.get_threshold()
    with pytest.raises(RuntimeError), young_collections_only():
        young0, young1, old = gc.get_threshold()
        assert (young0, young1) == before[:2]
        assert old > 1_000_000  # no full collection during a report
        raise RuntimeError("a failing report")
    assert gc.get_threshold() == before


def test_plain_map_of_the_drivers_map_and_of_any_mapping():
    from types import MappingProxyType

    from cassandra.cqltypes import UTF8Type
    from cassandra.util import OrderedMapSerializedKey

    from dataflow.exhaust.sources import plain_map

    driver_map = OrderedMapSerializedKey(UTF8Type, 4)
    pairs = {"district_name": "Bengaluru", "block_name": "North", "é": ""}
    for key, value in pairs.items():
        driver_map._insert(key, value)
    assert plain_map(driver_map) == pairs
    assert type(plain_map(driver_map)) is dict
    assert plain_map(MappingProxyType(pairs)) == pairs
    assert plain_map(None) is None
