"""The row helpers behave the same on SQLite and Postgres: duplicate keys are Conflicts (also when requests race),
other integrity errors are not, integers past 64 bits are refused by name, JSON columns and ordering round-trip, a
lookup by a value holding NUL (which Postgres' driver refuses to send) matches nothing."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from forgeflow.errors import Conflict, InvalidInput
from forgeflow.store.db import Store


@pytest.fixture
def store(database_url) -> Store:
    return Store(database_url)


def target(name: str, **fields) -> dict:
    return {"name": name, "type": "local", "max_concurrent_jobs": 1, "min_nodes": 0, "max_nodes": 1,
            "idle_time_before_scale_down": 120, "created_at": "2026-01-01T00:00:00+00:00"} | fields


def test_a_duplicate_key_is_a_conflict_naming_the_row(store):
    store.insert("compute_targets", target("gpu"))
    with pytest.raises(Conflict, match="compute target 'gpu' already exists") as exc:
        store.insert("compute_targets", target("gpu"))
    assert exc.value.field == "name"
    deployment = {"endpoint": "ep", "name": "blue", "model_ref": "m:1", "model_path": "/m", "runtime": "transformers",
                  "instance_count": 1, "request_settings": {}, "state": "Creating", "created_at": "x"}
    store.insert("deployments", deployment)
    with pytest.raises(Conflict, match="deployment 'blue' already exists on endpoint 'ep'"):
        store.insert("deployments", deployment)


def test_a_missing_required_value_is_not_taken_for_a_duplicate(store):
    with pytest.raises(sa.exc.IntegrityError):
        store.insert("compute_targets", target("nulls", type=None))


def test_racing_inserts_of_one_key_leave_one_row_and_conflicts(store):
    outcomes: list[str] = []
    barrier = threading.Barrier(6)

    def insert(i: int) -> None:
        barrier.wait()
        try:
            store.insert("compute_targets", target("raced", description=f"writer {i}"))
            outcomes.append("inserted")
        except Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=insert, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == ["conflict"] * 5 + ["inserted"]
    assert len(store.select("compute_targets", {"name": "raced"})) == 1


def test_racing_settings_keep_one_row(store):
    barrier = threading.Barrier(4)

    def write(i: int) -> None:
        barrier.wait()
        store.set_setting("raced", f"value {i}")

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [r["key"] for r in store.select("settings", {"key": "raced"})] == ["raced"]
    assert store.get_setting("raced").startswith("value ")


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 10**30])
def test_an_integer_past_64_bits_is_refused_naming_the_column(store, value):
    with pytest.raises(InvalidInput, match="max_nodes") as exc:
        store.insert("compute_targets", target("big", max_nodes=value))
    assert exc.value.field == "max_nodes"
    store.insert("compute_targets", target("edge", max_nodes=2**63 - 1, min_nodes=-(2**63)))
    assert store.get("compute_targets", name="edge")["max_nodes"] == 2**63 - 1


def test_json_columns_round_trip_and_rows_come_back_in_order(store):
    nested = {"blue": 70, "green": 30, "note": "ünïcode 'quoted' \"double\"", "flags": [True, False, None], "f": 0.5}
    for name in ("b-ep", "a-ep", "c-ep"):
        store.insert("endpoints", {"name": name, "auth_mode": "key", "primary_key": "p", "secondary_key": "s",
                                   "traffic": nested, "created_at": "2026-01-01T00:00:00+00:00"})
    assert store.get("endpoints", name="a-ep")["traffic"] == nested
    assert [r["name"] for r in store.select("endpoints", order_by="name")] == ["a-ep", "b-ep", "c-ep"]
    assert [r["name"] for r in store.select_in("endpoints", "name", ["c-ep", "a-ep"])] in (["a-ep", "c-ep"],
                                                                                            ["c-ep", "a-ep"])
    assert store.update("endpoints", {"name": "a-ep"}, {"traffic": {}}) == 1
    assert store.get("endpoints", name="a-ep")["traffic"] == {}
    assert store.delete("endpoints", {"name": "nope"}) == 0
    assert store.execute("DELETE FROM endpoints WHERE name < :n", {"n": "c"}) == 2


def test_a_string_longer_than_its_column_or_holding_nul_is_refused_naming_the_column(store):
    with pytest.raises(InvalidInput, match="size: at most 128 characters") as exc:
        store.insert("compute_targets", target("long", size="x" * 129))
    assert exc.value.field == "size"
    store.insert("compute_targets", target("long", size="é" * 128, description="y" * 100_000))
    with pytest.raises(InvalidInput, match="NUL") as exc:
        store.update("compute_targets", {"name": "long"}, {"description": "a\x00b"})
    assert exc.value.field == "description"
    assert store.get("compute_targets", name="long")["size"] == "é" * 128


def test_integer_columns_hold_64_bits_and_expiry_past_2038(store):
    store.insert("studio_sessions", {"id_hash": "h", "token_tag": "t", "created_at": "x", "expires_at": 2**40})
    assert store.get("studio_sessions", id_hash="h")["expires_at"] == 2**40
    store.insert("endpoints", {"name": "big", "auth_mode": "key", "primary_key": "p", "secondary_key": "s",
                               "traffic": {}, "created_at": "x", "max_body_bytes": 5 * 2**30})
    assert store.get("endpoints", name="big")["max_body_bytes"] == 5 * 2**30


def test_a_lookup_by_a_value_holding_nul_matches_nothing(store):
    store.insert("compute_targets", target("a"))
    nul = "a\x00b"
    assert store.get("compute_targets", name=nul) is None
    assert store.select("compute_targets", {"name": nul}) == []
    assert [r["name"] for r in store.select_in("compute_targets", "name", [nul, "a"])] == ["a"]
    assert store.select_in("compute_targets", "name", [nul]) == []
    assert store.update("compute_targets", {"name": nul}, {"description": "x"}) == 0
    assert store.delete("compute_targets", {"name": nul}) == 0
    with pytest.raises(InvalidInput, match="NUL") as exc:  # a hand-written statement: what it means is not guessed
        store.query("SELECT * FROM compute_targets WHERE name >= :low", {"low": nul})
    assert exc.value.field == "low"
    with pytest.raises(InvalidInput):
        store.execute("DELETE FROM compute_targets WHERE name <> :keep", {"keep": nul})
    assert [r["name"] for r in store.select("compute_targets")] == ["a"]
