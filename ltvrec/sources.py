"""Source adapters: each turns one input layout into the canonical raw tables.

Canonical `raw.events`: user_id, item_id, event_type, event_ts (UTC, naive), quantity, unit_price,
source_file, source_row. Canonical `raw.items`: item_id, title, category, price.
Adapters only reshape and parse; judging rows (duplicates, outliers, unknown items...) is dbt's job, so
nothing is dropped here.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

EVENT_COLUMNS = ["user_id", "item_id", "event_type", "event_ts", "quantity", "unit_price"]
ITEM_COLUMNS = ["item_id", "title", "category", "price"]
RAW_EVENTS_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("event_type", pa.string()),
        ("event_ts", pa.timestamp("us")),
        ("quantity", pa.float64()),
        ("unit_price", pa.float64()),
        ("source_file", pa.string()),
        ("source_row", pa.int64()),
    ]
)
RAW_ITEMS_SCHEMA = pa.schema(
    [("item_id", pa.string()), ("title", pa.string()), ("category", pa.string()), ("price", pa.float64())]
)


class InputError(ValueError):
    """Bad input file: the message names the file, and the column or row where possible."""


def read_table(path: Path) -> pd.DataFrame:
    """Read a Parquet or CSV file as a DataFrame (CSV as text, parsed later per column)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pq.read_table(path).to_pandas()
        if suffix in (".csv", ".tsv", ".txt"):
            return pd.read_csv(path, dtype=str, keep_default_na=False, sep="\t" if suffix == ".tsv" else ",")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not valid UTF-8 near byte {exc.start}") from exc
    except (pa.ArrowInvalid, pd.errors.ParserError, OSError) as exc:
        raise InputError(f"{path}: cannot be read ({exc})") from exc
    raise InputError(f"{path}: unsupported file type {suffix!r} (use .parquet or .csv)")


def _require(df: pd.DataFrame, columns: list[str], path: Path) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing required column(s) {', '.join(missing)}; found {', '.join(map(str, df.columns))}")


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
    parsed = pd.to_datetime(text.mask(text == ""), errors="coerce", utc=True, format="ISO8601")
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
        }
    )
    return pa.Table.from_pandas(out, schema=RAW_ITEMS_SCHEMA, preserve_index=False)


def load_events(path: Path, items_path: Path | None = None) -> tuple[pa.Table, pa.Table]:
    """The documented `events` contract (Parquet or CSV); a folder may hold events.* and items.*."""
    path = Path(path)
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.stem == "events" and p.suffix in (".parquet", ".csv"))
        if not found:
            raise InputError(f"{path}: folder has no events.parquet or events.csv")
        items_found = sorted(p for p in path.iterdir() if p.stem == "items" and p.suffix in (".parquet", ".csv"))
        path, items_path = found[0], items_path or (items_found[0] if items_found else None)
    df = read_table(path)
    _require(df, EVENT_COLUMNS, path)
    if df.empty:
        raise InputError(f"{path}: no rows")
    events = _to_raw_events(df, path)
    if items_path:
        items_df = read_table(Path(items_path))
        _require(items_df, ["item_id"], Path(items_path))
        items = _to_raw_items(items_df, Path(items_path))
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
    _require(df, ["Invoice", "StockCode", "Description", "Quantity", "InvoiceDate", "Price", "Customer ID"], path)
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
    folder = Path(folder)
    ratings_path, movies_path = folder / "ratings.dat", folder / "movies.dat"
    for p in (ratings_path, movies_path):
        if not p.exists():
            raise InputError(f"{p}: file not found (expected MovieLens-1M layout)")
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
