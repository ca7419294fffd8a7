import gzip
from datetime import datetime

import pandas as pd
import pytest

from ltvrec import sources, synthetic


def write_csv(path, text):
    path.write_text(text)
    return path


def test_events_csv_is_parsed_to_the_raw_contract(tmp_path):
    f = write_csv(tmp_path / "events.csv",
                  "user_id,item_id,event_type,event_ts,quantity,unit_price\n"
                  "u1,i1,VIEW,2024-01-01T10:00:00Z,1,\n"
                  "u1,i2,purchase,2024-01-01T12:00:00+02:00,2,3.5\n")
    events, items = sources.load_events(f)
    assert events.schema == sources.RAW_EVENTS_SCHEMA
    df = events.to_pandas()
    assert df["event_type"].tolist() == ["view", "purchase"]
    assert df["event_ts"].tolist() == [datetime(2024, 1, 1, 10), datetime(2024, 1, 1, 10)]  # mixed zones -> UTC
    assert df["source_row"].tolist() == [1, 2]
    assert sorted(items.column("item_id").to_pylist()) == ["i1", "i2"]


def test_missing_column_names_file_and_column(tmp_path):
    f = write_csv(tmp_path / "events.csv", "user_id,item_id,event_ts,quantity,unit_price\nu1,i1,2024-01-01,1,1\n")
    with pytest.raises(sources.InputError, match=r"events.csv: missing required column\(s\) event_type"):
        sources.load_events(f)


def test_bad_number_names_row_and_column(tmp_path):
    f = write_csv(tmp_path / "events.csv",
                  "user_id,item_id,event_type,event_ts,quantity,unit_price\n"
                  "u1,i1,view,2024-01-01,1,1\nu1,i1,view,2024-01-02,one,1\n")
    with pytest.raises(sources.InputError, match=r"column 'quantity' row 2: 'one' is not a number"):
        sources.load_events(f)


def test_bad_timestamp_names_row(tmp_path):
    f = write_csv(tmp_path / "events.csv",
                  "user_id,item_id,event_type,event_ts,quantity,unit_price\nu1,i1,view,yesterday,1,1\n")
    with pytest.raises(sources.InputError, match=r"column 'event_ts' row 1"):
        sources.load_events(f)


def test_empty_and_non_utf8_files(tmp_path):
    empty = tmp_path / "events.csv"
    empty.write_text("")
    with pytest.raises(sources.InputError, match="empty"):
        sources.load_events(empty)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("user_id,item_id,event_type,event_ts,quantity,unit_price\nu\xe9,i1,view,2024-01-01,1,1\n".encode("latin-1"))
    with pytest.raises(sources.InputError, match="not valid UTF-8"):
        sources.load_events(latin)


def test_folder_with_events_and_items(tmp_path):
    synthetic.write(tmp_path, n_users=20, n_items=30, seed=1)
    events, items = sources.load_events(tmp_path)
    assert events.num_rows > 0
    assert items.num_rows == 30 and items.column("title").null_count == 0


def test_online_retail_layout(tmp_path):
    df = pd.DataFrame({
        "Invoice": ["489434", "489434", "C489449", "489450"],
        "StockCode": ["85048", "79323p", "85048", "POST"],
        "Description": ["CUSHION", "LIGHT", "CUSHION", "POSTAGE"],
        "Quantity": [12, 6, -12, 1],
        "InvoiceDate": pd.to_datetime(["2009-12-01 07:45"] * 4),
        "Price": [6.95, 1.25, 6.95, 18.0],
        "Customer ID": pd.array([13085, 13085, None, 13085], dtype="Int64"),
        "Country": ["United Kingdom"] * 4,
    })
    path = tmp_path / "retail.parquet"
    df.to_parquet(path)
    events, items = sources.load_online_retail(path)
    ev = events.to_pandas()
    assert ev["event_type"].tolist() == ["purchase", "purchase", "return", "non_product"]
    assert ev["quantity"].tolist() == [12, 6, 12, 1]
    assert ev["user_id"].tolist()[:2] == ["13085", "13085"] and pd.isna(ev["user_id"][2])
    assert ev["item_id"].tolist()[1] == "79323P"
    assert sorted(items.column("item_id").to_pylist()) == ["79323P", "85048"]


def test_movielens_layout(tmp_path):
    (tmp_path / "ratings.dat").write_text("1::1193::5::978300760\n2::661::3::978302109\n")
    (tmp_path / "movies.dat").write_bytes("1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n661::Caf\xe9 (1996)::Animation|Children's\n".encode("latin-1"))
    events, items = sources.load_movielens(tmp_path)
    ev = events.to_pandas()
    assert ev["event_type"].unique().tolist() == ["rating"]
    assert ev["quantity"].tolist() == [5.0, 3.0]
    assert ev["event_ts"][0] == datetime(2000, 12, 31, 22, 12, 40)
    it = items.to_pandas().set_index("item_id")
    assert it.loc["661", "title"] == "Caf\xe9 (1996)" and it.loc["661", "category"] == "Animation, Children's"


def test_synthetic_is_deterministic_and_dirty():
    a, _ = synthetic.generate(n_users=50, n_items=40, seed=3)
    b, _ = synthetic.generate(n_users=50, n_items=40, seed=3)
    assert a.equals(b)
    df = a.to_pandas()
    assert df.duplicated().sum() > 0  # exact duplicates for dbt to quarantine
    assert df["user_id"].isna().sum() > 0
    assert set(df["event_type"]) <= {"view", "cart", "purchase", "return"}


def purchases_by_quarter(regime: str) -> pd.Series:
    events, _ = synthetic.generate(n_users=600, n_items=60, days=730, seed=4, regime=regime, dirt=False)
    df = events.to_pandas()
    bought = df[df["event_type"] == "purchase"]
    return bought.groupby(bought["event_ts"].dt.to_period("Q")).size()


def test_synthetic_regimes_shape_the_customer_base_over_time():
    ageing, growing = purchases_by_quarter("ageing").iloc[2:], purchases_by_quarter("growing").iloc[1:]
    assert (ageing.diff().dropna() < 0).all()  # after the joins, each quarter buys less than the one before
    assert (growing.diff().dropna() > 0).all()  # ever more customers
    seasonal = purchases_by_quarter("seasonal")
    q4 = seasonal[seasonal.index.quarter == 4].mean()
    assert q4 > 2 * seasonal[seasonal.index.quarter == 2].mean()  # the peak around late November
    steady, _ = synthetic.generate(n_users=50, n_items=40, seed=3, regime="steady")
    assert steady.equals(synthetic.generate(n_users=50, n_items=40, seed=3)[0])
    with pytest.raises(ValueError, match="regime 'ageless'"):
        synthetic.generate(n_users=5, regime="ageless")


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 64, 1 << 24])
def test_utf8_scan_is_exact_across_read_blocks(tmp_path, chunk):
    """The streamed UTF-8 check reads in blocks: a character split by a block edge is fine, the offset exact."""
    f = tmp_path / "events.csv"
    f.write_bytes(b"user_id,item_id\n" + "é€".encode() * 7 + b"\n")
    assert sources._first_non_utf8_byte(f, chunk) is None
    f.write_bytes(b"user_id,item_id\n" + "é€".encode() * 7 + b"\xff\n")
    assert sources._first_non_utf8_byte(f, chunk) == 16 + 5 * 7
    f.write_bytes(b"user_id,item_id\nu1,caf\xc3")  # cut inside a character at the very end
    assert sources._first_non_utf8_byte(f, chunk) == 16 + 6


def test_items_in_stock_flag(tmp_path):
    events = write_csv(tmp_path / "events.csv", "user_id,item_id,event_type,event_ts,quantity,unit_price\n"
                                                "u1,i1,view,2024-01-01T10:00:00Z,1,\n")
    items = write_csv(tmp_path / "items.csv", "item_id,title,in_stock\ni1,A,yes\ni2,B,FALSE\ni3,C,\ni4,D,0\n")
    _, table = sources.load_events(events, items)
    assert table.column("in_stock").to_pylist() == [True, False, None, False]  # empty: unknown (in stock)
    bad = write_csv(tmp_path / "bad_items.csv", "item_id,in_stock\ni1,true\ni2,maybe\n")
    with pytest.raises(sources.InputError, match=r"bad_items.csv: column 'in_stock' row 2: 'maybe' is not true/false"):
        sources.load_events(events, bad)


def test_gzipped_exports_in_a_folder(tmp_path):
    """events.tsv.gz and items.csv.gz are found in a folder and read through gzip; catalogue rows keep their
    file and row number (raw.items.source_file / source_row), as events do."""
    header = "user_id\titem_id\tevent_type\tevent_ts\tquantity\tunit_price\n"
    (tmp_path / "events.tsv.gz").write_bytes(gzip.compress((header + "u1\ti2\tview\t2024-01-01\t1\t\n").encode()))
    (tmp_path / "items.csv.gz").write_bytes(gzip.compress(b"item_id,title\ni1,A\ni2,B\ni1,C\n"))
    events, items = sources.load_events(tmp_path)
    assert events.column("item_id").to_pylist() == ["i2"]
    assert events.column("source_file").to_pylist() == [str(tmp_path / "events.tsv.gz")]
    assert items.schema == sources.RAW_ITEMS_SCHEMA
    assert items.column("item_id").to_pylist() == ["i1", "i2", "i1"]  # repeated ids are dbt's to judge
    assert items.column("source_row").to_pylist() == [1, 2, 3]
    assert set(items.column("source_file").to_pylist()) == {str(tmp_path / "items.csv.gz")}


def test_load_picks_the_reader_of_the_source(tmp_path):
    synthetic.write(tmp_path, n_users=5, n_items=10, seed=1)
    events, items = sources.load("events", str(tmp_path))
    expected_events, expected_items = sources.load_events(tmp_path)
    assert events.equals(expected_events) and items.equals(expected_items)
    with pytest.raises(ValueError, match="unknown source 'csv'"):
        sources.load("csv", str(tmp_path))
