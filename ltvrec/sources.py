"""Source adapters: each turns one input layout into the canonical raw tables.

Canonical `raw.events`: user_id, item_id, event_type, event_ts (UTC, naive), quantity, unit_price,
source_file, source_row. Canonical `raw.items`: item_id, title, category, price, in_stock, source_file, source_row.
Adapters only reshape and parse; judging rows (duplicates, conflicting catalogue rows, outliers, unknown
items...) is dbt's job, so nothing is dropped here.

`check_input` runs the checks that need no full read (paths, file types, header columns) before a run starts;
the readers run the same functions again, then parse every row.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import hashlib
import io
import logging
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

log = logging.getLogger("ltvrec")

EVENT_COLUMNS = ["user_id", "item_id", "event_type", "event_ts", "quantity", "unit_price"]
ITEM_COLUMNS = ["item_id", "title", "category", "price", "in_stock"]
REQUIRED_ITEM_COLUMNS = ["item_id"]
RETAIL_COLUMNS = ["Invoice", "StockCode", "Description", "Quantity", "InvoiceDate", "Price", "Customer ID"]
MOVIELENS_FILES = ("ratings.dat", "movies.dat")
# Text types and their separator; each may also be gzipped (`events.csv.gz`).
TEXT_TYPES = {".csv": ",", ".tsv": "\t", ".txt": ","}
FILE_TYPES = (".parquet", *TEXT_TYPES, *(suffix + ".gz" for suffix in TEXT_TYPES))
UTF8_BOM = codecs.BOM_UTF8
SOURCE_COLUMNS = [("source_file", pa.string()), ("source_row", pa.int64())]
RAW_EVENTS_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("event_type", pa.string()),
        ("event_ts", pa.timestamp("us")),
        ("quantity", pa.float64()),
        ("unit_price", pa.float64()),
        *SOURCE_COLUMNS,
    ]
)
RAW_ITEMS_SCHEMA = pa.schema(
    [("item_id", pa.string()), ("title", pa.string()), ("category", pa.string()), ("price", pa.float64()),
     ("in_stock", pa.bool_()), *SOURCE_COLUMNS]
)
NUMERIC_TYPES = ("int", "double", "float", "real", "numeric", "decimal")
TRUE_WORDS, FALSE_WORDS = {"true", "t", "yes", "y", "1"}, {"false", "f", "no", "n", "0"}


class InputError(ValueError):
    """Bad input: the message starts with the file (or folder) and names the column or row where possible."""


# --------------------------------------------------------------------------------------------------
# Checks that need no full read: check_input runs them before a run, the readers run them again


def check_input(source: str, path: str | None, items_path: str | None) -> None:
    """Refuse, before the DAG starts, input that cannot work: a missing path, a folder without the source's
    files, an unsupported file type, a header without the required columns. Reads headers and Parquet schemas
    only; the ingest stage reads everything and checks every row."""
    if source in ("synthetic", "warehouse") or path is None:  # no input file (RunConfig reports a missing path)
        return
    path = Path(path)
    if source == "events":
        events_path, items = _events_files(path, Path(items_path) if items_path else None)
        _require(_header_columns(events_path), EVENT_COLUMNS, events_path)
        if items:
            _require(_header_columns(items), REQUIRED_ITEM_COLUMNS, items)
    elif source == "online_retail":
        _require(_header_columns(path), RETAIL_COLUMNS, path)
    elif source == "movielens":
        _movielens_files(path)
    else:
        raise ValueError(f"unknown source {source!r}")


# The warehouse source's columns that dbt casts, and the types it can cast them from (substrings of
# information_schema's data_type, DuckDB's and PostgreSQL's); the ids and texts may have any type.
WAREHOUSE_TYPES = {"event_ts": ("timestamp", "date"), "quantity": NUMERIC_TYPES, "unit_price": NUMERIC_TYPES,
                   "price": NUMERIC_TYPES, "in_stock": ("boolean",)}


def check_tables(wh, schema: str, events_table: str, items_table: str, loaded_at_field: str) -> None:
    """The warehouse source's tables (in `wh`, a ltvrec.warehouse.Warehouse) exist, with the contract's columns
    (events: the events file's and `loaded_at_field`; items: item_id) in types dbt can cast: else InputError naming
    the table and the column."""
    contracts = {events_table: [*EVENT_COLUMNS, loaded_at_field], items_table: REQUIRED_ITEM_COLUMNS}
    for table, required in contracts.items():
        name = f"{schema}.{table}"
        columns = wh.columns(schema, table)
        if not columns:
            raise InputError(f"{name}: no such table in the {wh.kind} warehouse (the warehouse source reads the "
                             "tables your team loads: knobs raw_schema, events_table, items_table)")
        _require(list(columns), required, name)
        typed = {**WAREHOUSE_TYPES, loaded_at_field: ("timestamp", "date")}
        for column, kinds in typed.items():
            if column in columns and not any(kind in columns[column] for kind in kinds):
                raise InputError(f"{name}: column {column!r} is {columns[column]}, expected a {' or '.join(kinds)} "
                                 "type")


def _events_files(path: Path, items_path: Path | None = None) -> tuple[Path, Path | None]:
    """The `events` source's files: `path` itself, or a folder's events.* (and its items.*, if any, unless
    `items_path` is given)."""
    _must_exist(path)
    if path.is_dir():
        events, items = _named(path, "events"), _named(path, "items")
        if events is None:
            raise InputError(f"{path}: folder has no events file ({_one_of(['events' + t for t in FILE_TYPES])})")
        path, items_path = events, items_path or items
    return path, items_path


def _movielens_files(folder: Path) -> tuple[Path, Path]:
    """MovieLens-1M's ratings.dat and movies.dat in `folder`."""
    _must_exist(folder)
    ratings, movies = (folder / name for name in MOVIELENS_FILES)
    for p in (ratings, movies):
        if not p.exists():
            raise InputError(f"{p}: file not found (expected MovieLens-1M layout)")
    return ratings, movies


def _header_columns(path: Path) -> list[str]:
    """The column names of a supported file, read cheaply: a CSV's header row, a Parquet file's schema."""
    kind = _check_file(path)
    if kind == ".parquet":
        try:
            return pq.read_schema(path).names
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"{path}: cannot be read ({exc})") from exc
    return _csv_columns(path, _separator(kind))


def _file_type(path: Path) -> str:
    """The type `path` is read as, from its name ('.csv.gz': gzipped CSV); InputError for anything else."""
    name = path.name.lower()
    for kind in FILE_TYPES:
        if name.endswith(kind):
            return kind
    found = repr(path.suffix) if path.suffix else "(no suffix)"
    raise InputError(f"{path}: unsupported file type {found} (use {_one_of(FILE_TYPES)})")


def _check_file(path: Path) -> str:
    """Exists, is not empty and has a supported type: that type."""
    _must_exist(path)
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty")
    return _file_type(path)


def _must_exist(path: Path) -> None:
    if not path.exists():
        raise InputError(f"{path}: not found (no such file or folder)")


def _named(folder: Path, stem: str) -> Path | None:
    """The first file of `folder` named `stem` + a supported type, e.g. events.parquet or events.csv.gz."""
    names = {stem + kind for kind in FILE_TYPES}
    return min((p for p in folder.iterdir() if p.name.lower() in names), default=None)


def _one_of(names) -> str:
    names = list(names)
    return ", ".join(names[:-1]) + f" or {names[-1]}"


def _separator(kind: str) -> str:
    return TEXT_TYPES[kind.removesuffix(".gz")]


def _require(columns: list, required: list[str], path: Path | str) -> None:
    missing = [c for c in required if c not in columns]
    if missing:
        found = ", ".join(repr(str(c)) for c in columns)
        hint = ""
        if len(columns) == 1 and any(s in str(columns[0]) for s in (";", "\t", "|")):
            hint = " (one column only: is the file separated by something else than commas?)"
        raise InputError(f"{path}: missing required column(s) {', '.join(missing)}; found {found}{hint}")


def _warn_extra(columns: list, contract: list[str], path: Path) -> None:
    """Schema drift: columns outside the contract are ignored, with a warning naming them."""
    extra = [str(c) for c in columns if c not in contract]
    if extra:
        log.warning("%s: ignoring unexpected column(s) %s (the contract reads %s)", path,
                    ", ".join(map(repr, extra)), ", ".join(contract))


# --------------------------------------------------------------------------------------------------
# Reading whole files


def read_table(path: Path) -> pd.DataFrame:
    """Read a Parquet or CSV file (gzipped CSV too) as a DataFrame (CSV as text, parsed later per column)."""
    path = Path(path)
    kind = _check_file(path)
    if kind != ".parquet":
        return _read_csv(path, _separator(kind))
    try:
        return pq.read_table(path).to_pandas()
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{path}: cannot be read ({exc})") from exc


def _read_contract(path: Path, required: list[str], contract: list[str]) -> pd.DataFrame:
    """A whole file, checked against its contract: required columns present, others warned about, rows present."""
    df = read_table(path)
    _require(list(df.columns), required, path)
    _warn_extra(list(df.columns), contract, path)
    if df.empty:
        raise InputError(f"{path}: no rows")
    return df


def _read_csv(path: Path, sep: str) -> pd.DataFrame:
    """Strict CSV reader: every row must have as many fields as the header.

    A row with fewer or more fields (a file cut mid-row, an unbalanced quote, a stray separator) is an
    InputError naming the data row (1-based, header excluded, as `source_row`), never padded or shifted.
    """
    header = _csv_columns(path, sep)
    bad_rows: list = []

    def on_bad_row(row) -> str:
        bad_rows.append(row)
        return "error"

    try:
        bad_byte = _first_non_utf8_byte(path)
        if bad_byte is not None:
            raise _utf8_error(path, sep, bad_byte)
        table = pacsv.read_csv(  # a .gz name is decompressed by pyarrow
            path,
            # single-threaded: faster than pandas anyway, and bad rows keep their row number
            read_options=pacsv.ReadOptions(use_threads=False),
            parse_options=pacsv.ParseOptions(delimiter=sep, newlines_in_values=True, invalid_row_handler=on_bad_row),
            convert_options=pacsv.ConvertOptions(column_types={name: pa.string() for name in header},
                                                 strings_can_be_null=False, quoted_strings_can_be_null=False),
        )
    except pa.ArrowInvalid as exc:
        if bad_rows:
            raise _bad_row_error(path, bad_rows[0]) from None
        raise InputError(f"{path}: cannot be read ({exc})") from exc
    except (OSError, EOFError) as exc:  # EOFError: a gzip stream cut short
        raise InputError(f"{path}: cannot be read ({exc})") from exc
    return table.to_pandas()


def _bad_row_error(path: Path, row) -> InputError:
    where = f"row {row.number - 1}" if row.number else "a row"
    hint = "truncated row?" if row.actual_columns < row.expected_columns else "unquoted separator in a value?"
    if '"' in (row.text or ""):
        hint = "unbalanced quote?" if row.actual_columns < row.expected_columns else hint
    return InputError(f"{path}: {where}: expected {row.expected_columns} fields like the header, found "
                      f"{row.actual_columns} ({hint}): {_clip(row.text)!r}")


def _open(path: Path):
    """The file's bytes, decompressed when the name ends in .gz."""
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _csv_columns(path: Path, sep: str) -> list[str]:
    """The header row, checked: present, UTF-8, no name twice."""
    try:
        header = _csv_header(path, sep)
    except (OSError, EOFError) as exc:
        raise InputError(f"{path}: cannot be read ({exc})") from exc
    if not any(name.strip() for name in header):
        raise InputError(f"{path}: file is empty (no header row)")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise InputError(f"{path}: column(s) {', '.join(map(repr, repeated))} appear more than once in the header")
    return header


def _csv_header(path: Path, sep: str) -> list[str]:
    """The header row (first non-blank record), as pyarrow will read it; a UTF-8 BOM is skipped."""
    with _open(path) as fh:
        return next((record for record in csv.reader(_header_lines(path, fh), delimiter=sep) if record), [])


def _header_lines(path: Path, fh):
    """The lines of a binary file as text (any newline convention), read only as far as the caller asks."""
    offset = 0
    for line in fh:
        start = len(UTF8_BOM) if offset == 0 and line.startswith(UTF8_BOM) else 0
        try:
            yield from io.StringIO(line[start:].decode("utf-8"), newline="")
        except UnicodeDecodeError as exc:
            bad = start + exc.start
            raise _not_utf8(path, " header:", line[bad], offset + bad) from None
        offset += len(line)


def _clip(text: str | None, n: int = 80) -> str:
    text = text or ""
    return text if len(text) <= n else text[:n] + "..."


def _first_non_utf8_byte(path: Path, chunk: int = 1 << 24) -> int | None:
    """Offset of the first byte that is not UTF-8, or None (streamed: memory stays flat on big files)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with _open(path) as fh:
        while True:
            block = fh.read(chunk)
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:  # exc.start counts from the undecoded tail kept from the last block
                return offset - len(decoder.getstate()[0]) + exc.start
            if not block:
                return None
            offset += len(block)


def _utf8_error(path: Path, sep: str, pos: int) -> InputError:
    """InputError naming the data row (and column) of the byte at `pos`, the first one that is not UTF-8 (the
    header was checked before)."""
    with _open(path) as fh:  # error path only
        data = fh.read()
    line_start = data.rfind(b"\n", 0, pos) + 1
    line_end = data.find(b"\n", pos)
    line = data[line_start:] if line_end < 0 else data[line_start:line_end]
    # records before the bad line, header included (blank lines do not count, as for the reader)
    prefix = io.StringIO(data[:line_start].decode("utf-8-sig"), newline="")
    before = sum(1 for record in csv.reader(prefix, delimiter=sep) if record)
    fields = next(csv.reader([line.decode("utf-8", errors="replace")], delimiter=sep), [])
    header = _csv_header_lenient(data, sep)
    column = next((header[i] for i, f in enumerate(fields) if "\ufffd" in f and i < len(header)), None)
    col = f" column {column!r}" if column is not None else ""
    return _not_utf8(path, f"{col} row {before}:", data[pos], pos)


def _not_utf8(path: Path, where: str, byte: int, offset: int) -> InputError:
    return InputError(f"{path}:{where} not valid UTF-8 (byte 0x{byte:02x} at offset {offset}); save the file as UTF-8")


def _csv_header_lenient(data: bytes, sep: str) -> list[str]:
    text = data[: data.find(b"\n") if b"\n" in data else len(data)].decode("utf-8-sig", errors="replace")
    return next(csv.reader([text], delimiter=sep), [])


# --------------------------------------------------------------------------------------------------
# Parsing columns into the raw contract


def _ids(series: pd.Series) -> pd.Series:
    """Ids as text; integral floats (from nullable int columns) lose their '.0'."""
    if pd.api.types.is_float_dtype(series):
        series = series.astype("Int64")
    out = series.astype("string").str.strip()
    return out.mask(out == "")


def _numbers(series: pd.Series, column: str, path: Path) -> pd.Series:
    if pd.api.types.is_numeric_dtype(series):
        return series.astype("float64")
    text = series.astype("string").str.strip()
    parsed = pd.to_numeric(text.mask(text == ""), errors="coerce")
    bad = parsed.isna() & text.notna() & (text != "")
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise InputError(f"{path}: column {column!r} row {row + 1}: {text.iloc[row]!r} is not a number")
    return parsed.astype("float64")


def _timestamps(series: pd.Series, column: str, path: Path) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(series):
        if getattr(series.dt, "tz", None) is not None:
            series = series.dt.tz_convert("UTC").dt.tz_localize(None)
        return series.astype("datetime64[us]")
    text = series.astype("string").str.strip()
    # one UTC instant per row whatever each row's offset (mixed zones in one column are fine; no zone
    # means UTC); RFC 3339 allows a lower-case "t" / "z"
    parsed = pd.to_datetime(text.mask(text == "").str.upper(), errors="coerce", utc=True, format="ISO8601")
    bad = parsed.isna() & text.notna() & (text != "")
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise InputError(f"{path}: column {column!r} row {row + 1}: {text.iloc[row]!r} is not an ISO-8601 timestamp")
    return parsed.dt.tz_localize(None).astype("datetime64[us]")


def _to_raw_events(df: pd.DataFrame, path: Path) -> pa.Table:
    out = pd.DataFrame(
        {
            "user_id": _ids(df["user_id"]),
            "item_id": _ids(df["item_id"]),
            "event_type": df["event_type"].astype("string").str.strip().str.lower(),
            "event_ts": _timestamps(df["event_ts"], "event_ts", path),
            "quantity": _numbers(df["quantity"], "quantity", path),
            "unit_price": _numbers(df["unit_price"], "unit_price", path),
            "source_file": str(path),
            "source_row": range(1, len(df) + 1),
        }
    )
    return pa.Table.from_pandas(out, schema=RAW_EVENTS_SCHEMA, preserve_index=False)


def _to_raw_items(df: pd.DataFrame, path: Path) -> pa.Table:
    out = pd.DataFrame(
        {
            "item_id": _ids(df["item_id"]),
            "title": df["title"].astype("string") if "title" in df else None,
            "category": df["category"].astype("string") if "category" in df else None,
            "price": _numbers(df["price"], "price", path) if "price" in df else float("nan"),
            "in_stock": _booleans(df["in_stock"], "in_stock", path) if "in_stock" in df else None,
            "source_file": str(path),
            "source_row": range(1, len(df) + 1),
        }
    )
    return pa.Table.from_pandas(out, schema=RAW_ITEMS_SCHEMA, preserve_index=False)


def _booleans(series: pd.Series, column: str, path: Path) -> pd.Series:
    """true/false, yes/no, 1/0, t/f, y/n (any case); empty is unknown (NULL)."""
    if pd.api.types.is_bool_dtype(series):
        return series.astype("boolean")
    text = series.astype("string").str.strip().str.lower()
    out = pd.Series(pd.NA, index=series.index, dtype="boolean")
    out[text.isin(TRUE_WORDS).fillna(False).to_numpy(dtype=bool)] = True
    out[text.isin(FALSE_WORDS).fillna(False).to_numpy(dtype=bool)] = False
    bad = out.isna() & text.notna() & (text != "")
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise InputError(f"{path}: column {column!r} row {row + 1}: {series.iloc[row]!r} is not true/false (yes/no, 1/0)")
    return out


def load(source: str, path: str, items_path: str | None = None) -> tuple[pa.Table, pa.Table]:
    """The raw tables (events, items) of a file-based source: events, online_retail or movielens."""
    if source == "events":
        return load_events(Path(path), Path(items_path) if items_path else None)
    if source == "online_retail":
        return load_online_retail(Path(path))
    if source == "movielens":
        return load_movielens(Path(path))
    raise ValueError(f"unknown source {source!r}")


def load_events(path: Path, items_path: Path | None = None) -> tuple[pa.Table, pa.Table]:
    """The documented `events` contract (Parquet, CSV or gzipped CSV); a folder may hold events.* and items.*."""
    path, items_path = _events_files(Path(path), Path(items_path) if items_path else None)
    events = _to_raw_events(_read_contract(path, EVENT_COLUMNS, EVENT_COLUMNS), path)
    if items_path:  # (an empty catalogue would quarantine every event as unknown_item: "no rows" is an error)
        items = _to_raw_items(_read_contract(items_path, REQUIRED_ITEM_COLUMNS, ITEM_COLUMNS), items_path)
    else:  # no catalogue: every item seen in the events is known, without text or list price
        ids = pd.Series(events.column("item_id").to_pandas()).dropna().unique()
        items = _to_raw_items(pd.DataFrame({"item_id": ids}), path)
    return events, items


def load_online_retail(path: Path) -> tuple[pa.Table, pa.Table]:
    """UCI Online Retail II: invoice lines -> purchases, `C` invoices / negative quantities -> returns.

    Stock codes that do not start with a digit (POST, M, BANK CHARGES, AMAZONFEE, ...) are fees and
    adjustments, not products: they become `non_product` events, which dbt quarantines.
    """
    path = Path(path)
    df = read_table(path)
    _require(list(df.columns), RETAIL_COLUMNS, path)
    code = df["StockCode"].astype("string").str.strip().str.upper()
    qty = _numbers(df["Quantity"], "Quantity", path)
    is_return = df["Invoice"].astype("string").str.startswith("C") | (qty < 0)
    event_type = pd.Series("purchase", index=df.index, dtype="string").mask(is_return, "return")
    event_type = event_type.mask(~code.str.match(r"^\d"), "non_product")
    events = pd.DataFrame(
        {
            "user_id": df["Customer ID"],
            "item_id": code,
            "event_type": event_type,
            "event_ts": df["InvoiceDate"],
            "quantity": qty.abs(),
            "unit_price": df["Price"],
        }
    )
    desc = df["Description"].astype("string").str.strip()
    titled = pd.DataFrame({"item_id": code, "title": desc, "price": _numbers(df["Price"], "Price", path)})
    titled = titled[~event_type.isin(["non_product"]) & titled["title"].notna()]
    items = (
        titled.groupby("item_id")
        .agg(title=("title", lambda s: s.value_counts().index[0]), price=("price", lambda p: p[p > 0].median()))
        .reset_index()
    )
    items["category"] = None
    return _to_raw_events(events, path), _to_raw_items(items, path)


def load_movielens(folder: Path) -> tuple[pa.Table, pa.Table]:
    """MovieLens-1M `ratings.dat` / `movies.dat` (`::`-separated, Latin-1): ratings -> `rating` events."""
    ratings_path, movies_path = _movielens_files(Path(folder))
    ratings = pd.read_csv(ratings_path, sep="::", engine="python", header=None, encoding="latin-1",
                          names=["user_id", "item_id", "rating", "ts"], dtype=str)
    movies = pd.read_csv(movies_path, sep="::", engine="python", header=None, encoding="latin-1",
                         names=["item_id", "title", "genres"], dtype=str)
    events = pd.DataFrame(
        {
            "user_id": ratings["user_id"],
            "item_id": ratings["item_id"],
            "event_type": "rating",
            "event_ts": pd.to_datetime(_numbers(ratings["ts"], "Timestamp", ratings_path), unit="s"),
            "quantity": ratings["rating"],
            "unit_price": 0.0,
        }
    )
    items = pd.DataFrame({"item_id": movies["item_id"], "title": movies["title"],
                          "category": movies["genres"].str.replace("|", ", ", regex=False)})
    return _to_raw_events(events, ratings_path), _to_raw_items(items, movies_path)


def file_digest(*paths: Path) -> str:
    """sha256 over the input files (folders: every file inside, sorted)."""
    h = hashlib.sha256()
    for path in paths:
        files = sorted(p for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() else [Path(path)]
        for f in files:
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()
