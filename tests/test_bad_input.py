"""Bad-input matrix (issue 5): every class of bad input ends in a clear error or a documented outcome.

One table, `MATRIX`, lists the cases; each is a small CSV and what must happen to it, through the code a run
uses (`ltvrec.sources.load_events`, then `Warehouse.replace_table` and `ltvrec.cleaning.dbt_build`, as the
ingest and dbt_build stages do):

- `Rejected`: `load_events` raises `InputError`; the message starts with the file and names the row and/or
  the column.
- `Quarantined`: the file loads; after `dbt build` each listed data row is in `marts.events_quarantine` with
  its documented `reject_reason`, or (reason None) in `marts.fct_events`. Every quarantine case is one
  section of ONE events file, gzipped as exports often are (events.csv.gz), built once per warehouse (DuckDB,
  and PostgreSQL on a real server), so each case's rows are at an offset there; user ids are distinct per case
  so that no two cases are duplicates of each other. Its catalogue lists every item twice, the second time
  with another price (`test_conflicting_catalogue_rows_are_quarantined`).
- `Parsed`: the file loads, quietly, to the listed values.
- `Warned`: the file loads and a warning on the `ltvrec` logger names what was ignored.

Class 12 (a single user or a single item) needs the whole pipeline: `test_a_single_user_still_publishes`
below and `tests/test_e2e.py::test_a_one_item_catalogue_still_publishes_ltv`. What can be refused before a run
starts (`ltvrec.sources.check_input`) is checked at the end.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import subprocess
import sys
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ltvrec import cleaning, sources, warehouse

AS_OF = "2024-06-30"  # the run date: events after the end of this day are in the future
HEADER = "user_id,item_id,event_type,event_ts,quantity,unit_price"
ITEMS = "item_id,title,category,price\ni1,Mug,kitchen,8.5\ni2,Lamp,home,30\ni3,Pen,office,1.2\n"
ITEMS_RELISTED = "i1,Mug,kitchen,9\ni2,Lamp,home,32\ni3,Pen,office,1.5\n"  # the same items, other prices


def csv(*rows: str, header: str = HEADER) -> str:
    return "\n".join([header, *rows]) + "\n"


# --------------------------------------------------------------------------------------------------
# What must happen to a case


@dataclass(frozen=True)
class Rejected:
    """InputError; `match` is searched in the message, which must start with the offending file's path."""

    match: str
    file: str = "events.csv"

    def check(self, case: "Case", tmp_path: Path, request, caplog) -> None:
        events, items = case.write(tmp_path)
        with pytest.raises(sources.InputError) as info:
            sources.load_events(events, items)
        message = str(info.value)
        assert message.startswith(f"{tmp_path / self.file}:"), message
        assert re.search(self.match, message), message


@dataclass(frozen=True)
class Parsed:
    """Loads without a warning; `columns` are the expected raw.events values, row by row."""

    columns: dict[str, list]

    def check(self, case: "Case", tmp_path: Path, request, caplog) -> None:
        events, items = case.write(tmp_path)
        with caplog.at_level(logging.WARNING, logger="ltvrec"):
            table, _ = sources.load_events(events, items)
        assert table.schema == sources.RAW_EVENTS_SCHEMA
        got = table.to_pydict()
        for column, values in self.columns.items():
            assert got[column] == values, column
        assert not [r for r in caplog.records if r.name.startswith("ltvrec")]


@dataclass(frozen=True)
class Warned(Parsed):
    """Loads to `columns`, and a warning on the `ltvrec` logger matches `match`."""

    match: str = ""

    def check(self, case: "Case", tmp_path: Path, request, caplog) -> None:
        events, items = case.write(tmp_path)
        with caplog.at_level(logging.WARNING, logger="ltvrec"):
            table, catalogue = sources.load_events(events, items)
        assert table.schema == sources.RAW_EVENTS_SCHEMA and catalogue.schema == sources.RAW_ITEMS_SCHEMA
        got = table.to_pydict()
        for column, values in self.columns.items():
            assert got[column] == values, column
        warnings = [r.getMessage() for r in caplog.records if r.name == "ltvrec" and r.levelno == logging.WARNING]
        assert any(re.search(self.match, w) for w in warnings), warnings


@dataclass(frozen=True)
class Quarantined:
    """`rows`: the case's 1-based data row -> reject_reason, None for rows that must be valid events;
    `event_ts`: expected marts.fct_events.event_ts (naive UTC) of valid rows."""

    rows: dict[int, str | None]
    event_ts: dict[int, datetime] = field(default_factory=dict)

    def check(self, case: "Case", tmp_path: Path, request, caplog) -> None:
        built = request.getfixturevalue(f"built_{request.node.callspec.params['warehouse']}")
        offset = built["offsets"][case.id]
        for row, reason in self.rows.items():
            source_row = offset + row
            if reason is None:
                assert source_row in built["fct_events"], f"row {row} should be a valid event"
                assert source_row not in built["quarantine"]
            else:
                assert built["quarantine"].get(source_row, (None,))[0] == reason, f"row {row}"
                assert built["quarantine"][source_row][1] == str(built["events_path"])  # names the file
                assert source_row not in built["fct_events"]
        for row, expected in self.event_ts.items():
            assert built["fct_events"][offset + row]["event_ts"] == expected, f"row {row}"
        n_rows = len(case.events.strip().splitlines()) - 1
        assert set(self.rows) == set(range(1, n_rows + 1)), "every row of the case has an expectation"


@dataclass(frozen=True)
class Case:
    klass: int  # the bad-input class of issue 5 (1-12)
    name: str
    events: str | bytes  # the whole events CSV, header included
    expect: Rejected | Parsed | Warned | Quarantined
    items: str | bytes | None = None  # an items CSV, when the case has a catalogue
    events_name: str = "events.csv"

    @property
    def id(self) -> str:
        return f"c{self.klass:02d}-{self.name}"

    def write(self, folder: Path) -> tuple[Path, Path | None]:
        events = folder / self.events_name
        write(events, self.events)
        items = None if self.items is None else write(folder / "items.csv", self.items)
        return events, items


def write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


T = "2024-02-01T10:00:00Z"  # an ordinary timestamp
U = datetime(2024, 1, 1, 8)  # the instant every row of the mixed-zones case means

MATRIX = [
    # 1 missing required column -----------------------------------------------------------------
    Case(1, "missing-event-type", csv("u1,i1,2024-01-01,1,1", header="user_id,item_id,event_ts,quantity,unit_price"),
         Rejected(r"missing required column\(s\) event_type; found 'user_id', 'item_id', 'event_ts'")),
    Case(1, "misspelt-columns", csv("u1,i1,view,2024-01-01,1,1", header="userid,item_id,event_type,event_ts,qty,unit_price"),
         Rejected(r"missing required column\(s\) user_id, quantity; found 'userid'")),
    Case(1, "semicolon-separated", csv("u1;i1;view;2024-01-01;1;1", header=HEADER.replace(",", ";")),
         Rejected(r"missing required column\(s\) user_id, .*separated by something else than commas")),
    Case(1, "items-without-item-id", csv(f"u1,i1,view,{T},1,"), Rejected(r"missing required column\(s\) item_id",
         file="items.csv"), items="sku,title\ni1,Mug\n"),
    # 2 wrong types ---------------------------------------------------------------------------------
    Case(2, "quantity-not-a-number", csv(f"u1,i1,view,{T},1,1", f"u1,i1,view,{T},one,1"),
         Rejected(r"column 'quantity' row 2: 'one' is not a number")),
    Case(2, "price-with-currency", csv(f"u1,i1,purchase,{T},1,€3.50"),
         Rejected(r"column 'unit_price' row 1: '€3.50' is not a number")),
    Case(2, "decimal-comma", csv(f'u1,i1,purchase,{T},1,"3,50"'),
         Rejected(r"column 'unit_price' row 1: '3,50' is not a number")),
    Case(2, "quantity-nan", csv(f"u1,i1,purchase,{T},NaN,2"), Rejected(r"column 'quantity' row 1: 'NaN' is not a number")),
    Case(2, "timestamp-not-iso", csv(f"u1,i1,view,{T},1,", "u1,i1,view,31/12/2023,1,"),
         Rejected(r"column 'event_ts' row 2: '31/12/2023' is not an ISO-8601 timestamp")),
    Case(2, "timestamp-epoch-seconds", csv("u1,i1,view,1704103200,1,"),
         Rejected(r"column 'event_ts' row 1: '1704103200' is not an ISO-8601 timestamp")),
    Case(2, "items-price-not-a-number", csv(f"u1,i1,view,{T},1,"), Rejected(r"column 'price' row 2: 'cheap'", file="items.csv"),
         items="item_id,price\ni1,2\ni2,cheap\n"),
    Case(2, "unknown-event-type", csv(f"c2u1,i1,click,{T},1,1", f"c2u1,i1,PURCHASE ,{T},1,1"),
         Quarantined({1: "invalid_event_type", 2: None})),
    # 3 null or empty ids ---------------------------------------------------------------------------
    Case(3, "null-or-empty-ids", csv(f",i1,view,{T},1,", f'"   ",i1,view,{T},1,', f"c3u1,,purchase,{T},1,5",
                                     f'c3u1," ",purchase,{T},1,5', f",,view,{T},1,", f" c3u1 ,i1,purchase,{T},1,5"),
         Quarantined({1: "missing_user_id", 2: "missing_user_id", 3: "missing_item_id", 4: "missing_item_id",
                      5: "missing_user_id", 6: None})),
    # 4 negative or absurd prices and quantities ----------------------------------------------------
    Case(4, "negative-or-absurd-quantity", csv(
        "c4u1,i1,purchase,2024-02-01T10:00:00Z,-1,5", "c4u1,i1,purchase,2024-02-01T10:01:00Z,0,5",
        "c4u1,i1,purchase,2024-02-01T10:02:00Z,10001,5", "c4u1,i1,purchase,2024-02-01T10:03:00Z,1e9,5",
        "c4u1,i1,purchase,2024-02-01T10:04:00Z,inf,5", "c4u1,i1,purchase,2024-02-01T10:05:00Z,10000,5",
        "c4u1,i1,return,2024-02-01T10:06:00Z,-2,5", "c4u1,i1,purchase,2024-02-01T10:07:00Z,,5"),
        Quarantined({1: "invalid_quantity", 2: "invalid_quantity", 3: "invalid_quantity", 4: "invalid_quantity",
                     5: "invalid_quantity", 6: None, 7: "invalid_quantity", 8: "invalid_quantity"})),
    Case(4, "negative-or-absurd-price", csv(
        "c4u2,i1,purchase,2024-02-01T10:00:00Z,1,-0.01", "c4u2,i1,purchase,2024-02-01T10:01:00Z,1,100000.01",
        "c4u2,i1,purchase,2024-02-01T10:02:00Z,1,1e12", "c4u2,i1,purchase,2024-02-01T10:03:00Z,1,100000",
        "c4u2,i1,purchase,2024-02-01T10:04:00Z,1,", "c4u2,i1,view,2024-02-01T10:05:00Z,1,",
        "c4u2,i1,return,2024-02-01T10:06:00Z,1,-5", "c4u2,i1,purchase,2024-02-01T10:07:00Z,1,0"),
        Quarantined({1: "invalid_price", 2: "invalid_price", 3: "invalid_price", 4: None, 5: "invalid_price",
                     6: None, 7: "invalid_price", 8: None})),
    # 5 exact duplicate events ------------------------------------------------------------------------
    Case(5, "exact-duplicates", csv(
        "c5u1,i2,purchase,2024-03-01T10:00:00Z,2,9.99", "c5u1,i2,purchase,2024-03-01T10:00:00Z,2,9.99",
        "c5u1,i2,purchase,2024-03-01T10:00:00Z,3,9.99",  # another quantity: not a duplicate
        "c5u1,i2,purchase,2024-03-01T12:00:00+02:00,2,9.99",  # the same instant written in another zone
        " c5u1 ,i2,purchase,2024-03-01T10:00:00Z,2,9.990",  # padded id, same number
        "c5u1,i2,view,2024-03-01T10:00:00Z,1,", "c5u1,i2,view,2024-03-01T10:00:00Z,1,0"),  # no price on a view = 0
        Quarantined({1: None, 2: "duplicate", 3: None, 4: "duplicate", 5: "duplicate", 6: None, 7: "duplicate"})),
    # 6 timestamps in the future or before 1990 ---------------------------------------------------------
    Case(6, "timestamps-out-of-range", csv(
        "c6u1,i1,view,1989-12-31T23:59:59Z,1,", "c6u1,i1,view,1990-01-01T00:00:00Z,1,",
        "c6u1,i1,view,1970-01-01T00:00:00Z,1,", "c6u1,i1,view,0024-05-01,1,",
        f"c6u1,i1,view,{AS_OF}T23:59:59Z,1,", "c6u1,i1,view,2024-07-01T00:00:00Z,1,",
        "c6u1,i1,view,2024-07-01T01:00:00+02:00,1,",  # 2024-06-30 23:00 UTC: on the as-of day
        "c6u1,i1,view,9999-12-31,1,", "c6u1,i1,view,,1,"),
        Quarantined({1: "timestamp_before_min", 2: None, 3: "timestamp_before_min", 4: "timestamp_before_min",
                     5: None, 6: "timestamp_in_future", 7: None, 8: "timestamp_in_future", 9: "missing_timestamp"},
                    event_ts={7: datetime(2024, 6, 30, 23)})),
    # 7 mixed time zones: one UTC instant per row -----------------------------------------------------
    Case(7, "mixed-time-zones", csv(*[f"c7u{k},i3,view,{ts},1," for k, ts in enumerate([
        "2024-01-01T10:00:00+02:00", "2024-01-01T08:00:00Z", "2024-01-01T08:00:00", "2024-01-01 08:00:00",
        "2024-01-01T03:00:00-05:00", "2024-01-01T13:30:00+05:30", "2024-01-01T10:00:00+0200",
        "2024-01-01t08:00:00z", "2023-12-31T23:00:00-09:00", "2024-01-01T08:00:00.000+00:00", "2024-01-01"])]),
        Quarantined({k: None for k in range(1, 12)}, event_ts={**{k: U for k in range(1, 11)}, 11: datetime(2024, 1, 1)})),
    # 8 an empty file ---------------------------------------------------------------------------------
    Case(8, "zero-bytes", "", Rejected(r"file is empty")),
    Case(8, "blank-lines-only", "\n\n  \n", Rejected(r"file is empty \(no header row\)")),
    Case(8, "header-only", csv(), Rejected(r": no rows$")),
    Case(8, "empty-items-file", csv(f"u1,i1,view,{T},1,"), Rejected(r"file is empty", file="items.csv"), items=""),
    Case(8, "header-only-items-file", csv(f"u1,i1,view,{T},1,"), Rejected(r": no rows$", file="items.csv"),
         items="item_id,title\n"),
    # 9 events referencing unknown items ----------------------------------------------------------------
    Case(9, "unknown-items", csv(f"c9u1,i404,purchase,{T},1,5", f"c9u1,I1,purchase,{T},1,5",  # ids are case-sensitive
                                 f"c9u1, i1 ,purchase,{T},1,5", f"c9u1,i2,view,{T},1,"),
         Quarantined({1: "unknown_item", 2: "unknown_item", 3: None, 4: None})),
    Case(9, "no-catalogue-means-every-item-is-known", csv(f"u1,i404,view,{T},1,", f"u1,i405,view,{T},1,"),
         Parsed({"item_id": ["i404", "i405"]})),
    # 10 a truncated / non-UTF-8 CSV --------------------------------------------------------------------
    Case(10, "last-row-cut", csv(f"u1,i1,view,{T},1,", f"u1,i2,view,{T},1,", "u1,i3,pur").rstrip("\n"),
         Rejected(r"row 3: expected 6 fields like the header, found 3 \(truncated row\?\): 'u1,i3,pur'")),
    Case(10, "row-cut-in-the-middle", csv(f"u1,i1,view,{T},1,", "u1,i2", f"u1,i3,view,{T},1,"),
         Rejected(r"row 2: expected 6 fields like the header, found 2")),
    Case(10, "unterminated-quote", csv(f"u1,i1,view,{T},1,", f'u1,"i2,view,{T},1,', f"u1,i3,view,{T},1,"),
         Rejected(r"row 2: expected 6 fields like the header, found 2 \(unbalanced quote\?\)")),
    Case(10, "extra-field-in-first-row", csv(f"u1,i1,view,{T},1,2,3", f"u1,i2,view,{T},1,"),  # was read shifted
         Rejected(r"row 1: expected 6 fields like the header, found 7")),
    Case(10, "latin-1", csv(f"u1,i1,view,{T},1,", f"u1,caf\xe9,view,{T},1,").encode("latin-1"),
         Rejected(r"column 'item_id' row 2: not valid UTF-8 \(byte 0xe9")),
    Case(10, "cut-inside-a-utf8-character", csv(f"u1,i1,view,{T},1,", "u1,caf").encode()[:-1] + "é".encode()[:1],
         Rejected(r"column 'item_id' row 2: not valid UTF-8")),
    Case(10, "utf-16", csv(f"u1,i1,view,{T},1,").encode("utf-16"), Rejected(r"header: not valid UTF-8 \(byte 0xff")),
    Case(10, "utf-8-with-bom", b"\xef\xbb\xbf" + csv(f"u1,i1,view,{T},1,").encode(), Parsed({"user_id": ["u1"]})),
    Case(10, "gzipped-export", gzip.compress(csv(f"u1,i1,view,{T},1,", f"u2,i2,purchase,{T},2,3.5").encode()),
         Parsed({"user_id": ["u1", "u2"], "quantity": [1.0, 2.0], "unit_price": [None, 3.5]}),
         events_name="events.csv.gz"),
    Case(10, "latin-1-inside-gzip", gzip.compress(csv(f"u1,i1,view,{T},1,", f"u1,caf\xe9,view,{T},1,").encode("latin-1")),
         Rejected(r"column 'item_id' row 2: not valid UTF-8 \(byte 0xe9", file="events.csv.gz"), events_name="events.csv.gz"),
    Case(10, "gzip-cut-short", gzip.compress(csv(*[f"u{k},i1,view,{T},1," for k in range(50)]).encode())[:-12],
         Rejected(r"cannot be read", file="events.csv.gz"), events_name="events.csv.gz"),
    Case(10, "latin-1-items-file", csv(f"u1,i1,view,{T},1,"),
         Rejected(r"column 'title' row 1: not valid UTF-8", file="items.csv"), items="item_id,title\ni1,Caf\xe9\n".encode("latin-1")),
    # 11 extra unexpected columns (schema drift) ---------------------------------------------------------
    Case(11, "extra-columns-are-ignored-with-a-warning", csv(f"u1,i1,view,{T},1,,web,x", header=HEADER + ",channel,"),
         Warned({"user_id": ["u1"], "unit_price": [None]}, match=r"events.csv: ignoring unexpected column\(s\) 'channel', ''")),
    Case(11, "extra-items-columns", csv(f"u1,i1,view,{T},1,"), items="item_id,title,colour\ni1,Mug,red\n",
         expect=Warned({"item_id": ["i1"]}, match=r"items.csv: ignoring unexpected column\(s\) 'colour'")),
    Case(11, "reordered-columns-are-read-by-name",
         csv(f"2,{T},purchase,9.5,i1,u1", header="quantity,event_ts,event_type,unit_price,item_id,user_id"),
         Parsed({"user_id": ["u1"], "item_id": ["i1"], "quantity": [2.0], "unit_price": [9.5]})),
    Case(11, "repeated-column", csv(f"u1,u2,i1,view,{T},1,", header="user_id," + HEADER),
         Rejected(r"column\(s\) 'user_id' appear more than once in the header")),
]

QUARANTINE_CASES = [case for case in MATRIX if isinstance(case.expect, Quarantined)]


def matrix_params():
    for case in MATRIX:
        warehouses = ("duckdb", "postgres") if isinstance(case.expect, Quarantined) else ("none",)
        for wh in warehouses:
            yield pytest.param(case, wh, id=case.id if wh == "none" else f"{case.id}-{wh}")


@pytest.mark.parametrize("case, warehouse", matrix_params())
def test_bad_input(case, warehouse, tmp_path, request, caplog):
    case.expect.check(case, tmp_path, request, caplog)


def test_the_matrix_covers_classes_1_to_11_with_unique_names():
    assert {case.klass for case in MATRIX} == set(range(1, 12))  # 12 is end to end, below
    assert len({case.id for case in MATRIX}) == len(MATRIX)


def test_parquet_with_wrong_types_names_the_column_and_row(tmp_path):
    """Parquet carries types, but not always the right ones: text in a number column, numbers as timestamps."""
    good = {"user_id": ["u1", "u2"], "item_id": ["i1", "i2"], "event_type": ["view", "view"],
            "event_ts": ["2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z"], "quantity": [1.0, 1.0], "unit_price": [0.0, 0.0]}
    path = tmp_path / "events.parquet"
    pq.write_table(pa.table({**good, "quantity": ["1", "two"]}), path)
    with pytest.raises(sources.InputError, match=rf"^{re.escape(str(path))}: column 'quantity' row 2: 'two' is not a number"):
        sources.load_events(path)
    pq.write_table(pa.table({**good, "event_ts": [1704067200, 1704153600]}), path)
    with pytest.raises(sources.InputError, match=r"column 'event_ts' row 1: '1704067200' is not an ISO-8601 timestamp"):
        sources.load_events(path)
    pq.write_table(pa.table({k: v[:0] for k, v in good.items()}), path)
    with pytest.raises(sources.InputError, match=r"events.parquet: no rows"):
        sources.load_events(path)


# --------------------------------------------------------------------------------------------------
# The quarantine cases: one events file, loaded and built once per warehouse


@pytest.fixture(scope="module")
def quarantine_input(tmp_path_factory):
    """All quarantine cases in one gzipped events file (in MATRIX order) and the shared catalogue, every item
    listed twice."""
    folder = tmp_path_factory.mktemp("bad_input")
    lines, offsets = [HEADER], {}
    for case in QUARANTINE_CASES:
        offsets[case.id] = len(lines) - 1
        lines += case.events.strip("\n").splitlines()[1:]
    events = write(folder / "events.csv.gz", gzip.compress(("\n".join(lines) + "\n").encode()))
    items = write(folder / "items.csv", ITEMS + ITEMS_RELISTED)
    return events, items, offsets


def build_marts(url: str, quarantine_input, tmp: Path) -> dict:
    """What `ltvrec run` does for these stages: load_events -> raw tables -> dbt build (as_of given)."""
    events_path, items_path, offsets = quarantine_input
    events, items = sources.load_events(events_path, items_path)
    wh = warehouse.connect(url)
    wh.replace_table("raw", "events", events)
    wh.replace_table("raw", "items", items)
    # raises naming the failed nodes
    record = cleaning.dbt_build(wh, cleaning.dbt_vars(AS_OF), tmp / "target", tmp / "logs")
    fct = wh.query("select event_id, user_id, item_id, event_type, event_ts, quantity, unit_price from marts.fct_events")
    quarantine = wh.query("select source_row, reject_reason, source_file from marts.events_quarantine")
    n_raw = wh.query("select count(*) as n from raw.events").to_pylist()[0]["n"]
    assert fct.num_rows + quarantine.num_rows == n_raw == events.num_rows
    items_quarantine = wh.query("select source_row, reject_reason, source_file from marts.items_quarantine").to_pylist()
    prices = wh.query("select item_id, price from marts.dim_items").to_pylist()
    return {
        "offsets": offsets,
        "events_path": events_path,
        "items_path": items_path,
        "record": record,
        "fct_events": {r["event_id"]: r for r in fct.to_pylist()},
        "quarantine": {r["source_row"]: (r["reject_reason"], r["source_file"]) for r in quarantine.to_pylist()},
        "items_quarantine": {r["source_row"]: (r["reject_reason"], r["source_file"]) for r in items_quarantine},
        "prices": {r["item_id"]: r["price"] for r in prices},
    }


@pytest.fixture(scope="module")
def built_duckdb(quarantine_input, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dbt_duckdb")
    return build_marts(f"duckdb:///{tmp / 'warehouse.duckdb'}", quarantine_input, tmp)


@pytest.fixture(scope="module")
def built_postgres(quarantine_input, tmp_path_factory, pg_dsn):
    """Same on a fresh database of the test PostgreSQL server (module-scoped twin of conftest's pg_database)."""
    import psycopg
    from conftest import with_dbname

    name = f"ltvrec_bad_input_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(f'create database "{name}"')
    try:
        yield build_marts(with_dbname(pg_dsn, name), quarantine_input, tmp_path_factory.mktemp("dbt_postgres"))
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute(f'drop database if exists "{name}" with (force)')


@pytest.mark.parametrize("warehouse", ["duckdb", "postgres"])
def test_conflicting_catalogue_rows_are_quarantined(warehouse, request):
    """Every item listed twice, the second time with another price: the second rows land in
    marts.items_quarantine as conflicting_item, the first row of each item is the catalogue."""
    built = request.getfixturevalue(f"built_{warehouse}")
    assert built["items_quarantine"] == {row: ("conflicting_item", str(built["items_path"])) for row in (4, 5, 6)}
    assert {item: built["prices"][item] for item in ("i1", "i2", "i3")} == {"i1": 8.5, "i2": 30.0, "i3": 1.2}
    assert built["record"]["quarantine_items"] == {"conflicting_item": 3}
    assert built["record"]["rows"]["items_quarantined"] == 3
    assert built["record"]["quarantine"] == dict(Counter(reason for reason, _ in built["quarantine"].values()))


# --------------------------------------------------------------------------------------------------
# Refused before the run starts: sources.check_input reads paths, names, headers and schemas only


def semicolon_file(folder: Path) -> Path:
    return write(folder / "events.csv", csv("u1;i1;view;2024-01-01;1;1", header=HEADER.replace(",", ";")))


@pytest.mark.parametrize("make, match", [
    pytest.param(lambda folder: folder / "missing.csv", r"not found \(no such file or folder\)$", id="missing-path"),
    pytest.param(lambda folder: (folder / "export").mkdir() or folder / "export",
                 r"folder has no events file \(events.parquet, events.csv, .*events.csv.gz, .*\)$", id="empty-folder"),
    pytest.param(semicolon_file, r"missing required column\(s\) user_id, .*separated by something else than commas",
                 id="semicolon-separated"),
    pytest.param(lambda folder: write(folder / "events.xlsx", b"PK\x03\x04 a spreadsheet"),
                 r"unsupported file type '.xlsx' \(use .parquet, .csv, .tsv, .txt, .csv.gz, .tsv.gz or .txt.gz\)$",
                 id="xlsx"),
])
def test_check_input_refuses_with_one_plain_message(make, match, tmp_path):
    path = make(tmp_path)
    with pytest.raises(sources.InputError) as info:
        sources.check_input("events", str(path), None)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    assert re.search(match, message), message


def test_check_input_says_what_the_full_read_says(tmp_path):
    """One rule, one place: the up-front check and the ingest refuse a file with the same message."""
    path = semicolon_file(tmp_path)
    with pytest.raises(sources.InputError) as before_the_run:
        sources.check_input("events", str(path), None)
    with pytest.raises(sources.InputError) as at_ingest:
        sources.load_events(path)
    assert str(before_the_run.value) == str(at_ingest.value)


def test_check_input_accepts_what_the_sources_read(tmp_path):
    """A folder of gzipped CSV exports, a Parquet file with the contract's columns, a MovieLens folder."""
    write(tmp_path / "events.csv.gz", gzip.compress(csv(f"u1,i1,view,{T},1,").encode()))
    write(tmp_path / "items.csv.gz", gzip.compress(ITEMS.encode()))
    sources.check_input("events", str(tmp_path), None)
    events, items = sources.load_events(tmp_path)
    assert events.column("user_id").to_pylist() == ["u1"] and items.column("item_id").to_pylist() == ["i1", "i2", "i3"]
    parquet = tmp_path / "retail.parquet"
    pq.write_table(pa.table({name: ["x"] for name in sources.RETAIL_COLUMNS}), parquet)
    sources.check_input("online_retail", str(parquet), None)
    with pytest.raises(sources.InputError, match=r"missing required column\(s\) user_id, item_id"):
        sources.check_input("events", str(parquet), None)  # a Parquet file's columns come from its schema
    for name in sources.MOVIELENS_FILES:
        write(tmp_path / name, "1::1::5::978300760\n")
    sources.check_input("movielens", str(tmp_path), None)
    (tmp_path / "not_movielens").mkdir()
    with pytest.raises(sources.InputError, match=r"ratings.dat: file not found \(expected MovieLens-1M layout\)"):
        sources.check_input("movielens", str(tmp_path / "not_movielens"), None)


# --------------------------------------------------------------------------------------------------
# Class 12: a single user (a single item: tests/test_e2e.py::test_a_one_item_catalogue_still_publishes_ltv)

LTVREC = str(Path(sys.executable).parent / "ltvrec")


def ltvrec(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LTVREC_HOME": str(home)}
    for key in ("AIRFLOW_HOME", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)  # the run must use its own embedded set-up under LTVREC_HOME
    return subprocess.run([LTVREC, *args], env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_a_single_user_still_publishes(tmp_path):
    """One customer, 40 purchases of 15 items over a year, in a 30-item catalogue: the run publishes that
    customer's recommendations (all among the 15 items not bought) and one LTV row. (Without a catalogue the
    customer has bought every item: the run then publishes the LTV row alone, like the one-item case.)"""
    import duckdb
    import numpy as np

    rng = np.random.default_rng(5)
    lines = [HEADER]
    for day in sorted(rng.choice(360, size=40, replace=False)):
        lines.append(f"solo,i{int(rng.integers(0, 15))},purchase,2025-{1 + day // 30:02d}-{1 + day % 28:02d}T10:00:00,"
                     f"{int(rng.integers(1, 4))},{rng.uniform(5, 50):.2f}")
    events = write(tmp_path / "events.csv", "\n".join(lines) + "\n")
    items = write(tmp_path / "items.csv", "item_id,title,category,price\n"
                  + "".join(f"i{k},Item {k},cat{k % 3},{5 + k}\n" for k in range(30)))
    home = tmp_path / "home"
    result = ltvrec(home, "run", "--source", "events", "--path", str(events), "--items-path", str(items), "--epochs", "2",
                    "--conf", json.dumps({"horizon_days": 60, "item_text": False, "als_tuning": False}))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with duckdb.connect(str(home / "warehouse.duckdb")) as con:
        recs = con.sql("select user_id, count(*), count(distinct item_id) from serving.recommendations group by 1").fetchall()
        seen = con.sql("select count(*) from serving.recommendations r join marts.fct_events e using (user_id, item_id)").fetchall()
        ltv = con.sql("select user_id, p_active, expected_value from serving.ltv_estimates").fetchall()
    assert [user for user, _, _ in recs] == ["solo"] and recs[0][1] == recs[0][2] == 10  # the default top-N
    assert seen == [(0,)]  # never an item already bought
    assert len(ltv) == 1 and ltv[0][0] == "solo" and 0 <= ltv[0][1] <= 1 and ltv[0][2] >= 0
