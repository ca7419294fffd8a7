"""Batch scoring: chunked equals unchunked, seen and out-of-catalogue items never appear, LTV in the same pass,
and the Spark path (jobs/score.py, local mode) gives the local path's top-N."""

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from ltvrec.config import EVENT_TYPES
from models.checkpoint import LoadedModel
from models.data import LTV_FEATURES, FeatureScaler, FeatureSet, epoch
from models.sasrec import ModelConfig, SeqRecModel
from models.score import RECS_SCHEMA, auto_chunk_size, score_ltv, score_recommendations, stream_scores

ROOT = Path(__file__).resolve().parents[1]
END = "2026-01-01T00:00:00"


def write_features(folder: Path, n_users=40, n_items=30, seed=0) -> Path:
    """A features folder in the Spark job's layout: items, sequences, ltv_features, split.json."""
    rng = np.random.default_rng(seed)
    items = pd.DataFrame({"item_idx": np.arange(1, n_items + 1, dtype=np.int32), "item_id": [f"i{j}" for j in range(n_items)],
                          "category": [f"c{j % 4}" for j in range(n_items)], "price": rng.uniform(1, 20, n_items),
                          "in_stock": [j != 5 for j in range(n_items)]})  # i5 is out of stock
    rows = []
    for u in range(n_users):
        n = int(rng.integers(1, 12))
        its = rng.choice(np.arange(1, n_items + 1), size=n).astype(np.int32)
        if u == 0:
            its = np.arange(1, n_items + 1, dtype=np.int32)  # has seen every item: nothing to recommend
        ts = np.sort(rng.integers(epoch(END) - 300 * 86400, epoch(END) - 1, size=len(its))).astype(np.int64)
        rows.append({"user_id": f"u{u:03d}", "items": its.tolist(), "types": rng.integers(1, 4, len(its)).astype(np.int32).tolist(),
                     "ts": ts.tolist(), "n_events": len(its)})
    ltv = pd.DataFrame({c: rng.gamma(2.0, 10.0, n_users // 2) for c in LTV_FEATURES})
    ltv.insert(0, "user_id", [f"u{u:03d}" for u in range(0, n_users, 2)])  # every second user is a customer
    ltv["cutoff"], ltv["label_value"], ltv["label_active"] = "score", 0.0, 0
    for name, frame in (("items", items), ("sequences", pd.DataFrame(rows)), ("ltv_features", ltv)):
        (folder / name).mkdir(parents=True)
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), folder / name / "part-0.parquet")
    split = {"as_of": "2025-12-31", "end": END, "ltv_cutoffs": {"score": END}, "horizon_days": 90,
             "event_types": list(EVENT_TYPES)}
    (folder / "split.json").write_text(json.dumps(split))
    return folder


def checkpoint(fs: FeatureSet, path: Path, extra_items=(), seed=0, time_gaps=False, ltv_user_dim=8,
               horizon_days=None) -> Path:
    """A randomly initialised model over this catalogue (plus `extra_items` the run's catalogue lacks)."""
    torch.manual_seed(seed)
    item_ids = list(fs.item_ids) + list(extra_items)
    model = SeqRecModel(ModelConfig(n_items=len(item_ids) + 1, n_ltv_features=len(LTV_FEATURES),
                                    n_event_types=len(fs.event_types) + 1, max_len=8, d_model=16,
                                    ltv_user_dim=ltv_user_dim, ltv_sigma_max=2.0, time_gaps=time_gaps))
    with torch.no_grad():
        model.item_emb.weight.normal_(0, 1.0)  # spread the logits: no near-ties between the two paths
    torch.save({"model": model.state_dict(), "model_config": asdict(model.cfg), "item_ids": item_ids,
                "item_price": [0.0] + [float(p) for p in fs.item_price[1:]] + [5.0] * len(extra_items),
                "scaler": FeatureScaler.fit(fs.ltv, LTV_FEATURES).to_dict(), "horizon_days": horizon_days}, path)
    return path


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    folder = write_features(tmp_path_factory.mktemp("features"))
    fs = FeatureSet.load(folder)
    ckpt = checkpoint(fs, folder.parent / "model.pt", extra_items=["gone1", "gone2"])
    return folder, fs, ckpt, LoadedModel.from_file(ckpt)


@pytest.fixture(scope="module")
def gap_case(case, tmp_path_factory):
    """The same features and catalogue, with a model that embeds the time between events."""
    folder, fs, _, _ = case
    ckpt = checkpoint(fs, tmp_path_factory.mktemp("gaps") / "model.pt", extra_items=["gone1", "gone2"], time_gaps=True)
    return folder, fs, ckpt, LoadedModel.from_file(ckpt)


def frame(table: pa.Table) -> pd.DataFrame:
    return table.to_pandas().sort_values(list(table.column_names[:2]), ignore_index=True)


@pytest.mark.parametrize("rank_by,time_gaps", [("relevance", False), ("expected_value", False), ("relevance", True)])
def test_chunked_scoring_equals_unchunked(case, gap_case, rank_by, time_gaps):
    _, fs, _, loaded = gap_case if time_gaps else case
    whole = frame(score_recommendations(fs, loaded, 5, rank_by, chunk=10_000))
    for chunk in (1, 3, 7):
        pd.testing.assert_frame_equal(frame(score_recommendations(fs, loaded, 5, rank_by, chunk=chunk)), whole,
                                      check_exact=False, rtol=1e-4)
    pd.testing.assert_frame_equal(frame(score_ltv(fs, loaded, chunk=3)), frame(score_ltv(fs, loaded, chunk=10_000)),
                                  check_exact=False, rtol=1e-4)


def test_seen_and_unknown_items_never_appear_and_ranks_are_complete(case):
    _, fs, _, loaded = case
    recs = score_recommendations(fs, loaded, 5, chunk=4).to_pandas()
    seen = {(fs.users[u], fs.item_ids[i - 1]) for u in range(len(fs.users)) for i in fs.items[u]}
    assert not any((u, i) in seen for u, i in zip(recs["user_id"], recs["item_id"]))
    assert not recs["item_id"].isin(["gone1", "gone2"]).any()  # the model knows them, the catalogue does not
    assert not recs["item_id"].isin(["i5"]).any()  # out of stock
    per_user = recs.groupby("user_id")["rank"].agg(["count", "min", "max"])
    assert "u000" not in per_user.index  # has every item already
    assert len(per_user) == len(fs.users) - 1 and (per_user["count"] == 5).all() and (per_user["max"] == 5).all()
    assert recs.groupby("user_id")["score"].apply(lambda s: s.is_monotonic_decreasing).all()


def test_a_category_cap_diversifies_each_list_and_keeps_its_length(case):
    _, fs, _, loaded = case
    plain = score_recommendations(fs, loaded, 6, chunk=5).to_pandas()
    capped = score_recommendations(fs, loaded, 6, chunk=5, max_per_category=2).to_pandas()
    category = dict(zip(fs.item_ids, fs.item_category))
    for recs in (plain, capped):
        recs["category"] = recs["item_id"].map(category)
    assert capped.groupby(["user_id", "category"]).size().max() <= 2  # 4 categories x 2 >= 6 slots
    assert plain.groupby(["user_id", "category"]).size().max() > 2  # (the cap changed something)
    assert capped.groupby("user_id").size().equals(plain.groupby("user_id").size())
    first = capped.sort_values(["user_id", "rank"]).groupby("user_id").head(1).set_index("user_id")["item_id"]
    assert first.equals(plain.sort_values(["user_id", "rank"]).groupby("user_id").head(1).set_index("user_id")["item_id"])


def test_cap_per_category_by_hand():
    from models.score import cap_per_category

    idx = np.array([[1, 2, 3, 4, 5]])
    scores = np.array([[5.0, 4.0, 3.0, 2.0, -np.inf]])
    cats = np.array([-1, -1, 0, 0, 1, 1])  # by item index (0 = padding): item 1 has none, 2-3 are c0, 4-5 c1
    got, got_scores = cap_per_category(idx, scores, cats, cap=1, n=3)
    assert got.tolist() == [[1, 2, 4]]  # item 3 is a second of category 0: skipped; 5 has nothing left (-inf)
    assert got_scores.tolist() == [[5.0, 4.0, 2.0]]
    got, _ = cap_per_category(idx, scores, cats, cap=1, n=4)
    assert got.tolist() == [[1, 2, 4, 3]]  # candidates ran out: the best skipped one fills the list


def test_ltv_rows_come_from_the_same_pass_for_customers_only(case):
    _, fs, _, loaded = case
    from models.evaluate import predict_ltv

    ltv = frame(score_ltv(fs, loaded, chunk=3))
    assert ltv["user_id"].tolist() == sorted(fs.ltv["user_id"])
    ref, p, ev = predict_ltv(fs, loaded, "score")  # the evaluation code's separate LTV pass
    np.testing.assert_allclose(ltv["p_active"], p, rtol=1e-4)
    np.testing.assert_allclose(ltv["expected_value"], ev, rtol=1e-4)


def test_one_models_recommender_combines_with_anothers_ltv_head(case, tmp_path):
    """The model gate may keep one version's LTV head while another's recommender is promoted: the scores then
    come from a combined checkpoint, each head exactly as in its own model."""
    from models.checkpoint import combine_heads

    _, fs, _, _ = case
    recommender = checkpoint(fs, tmp_path / "rec.pt", seed=1, ltv_user_dim=0, horizon_days=90)
    ltv_head = checkpoint(fs, tmp_path / "ltv.pt", seed=2, ltv_user_dim=0, horizon_days=60)
    combined = LoadedModel.from_file(combine_heads(recommender, ltv_head, tmp_path / "both.pt"))
    assert combined.horizon_days == 60  # the published estimates are labelled with the LTV head's horizon
    assert frame(score_recommendations(fs, combined, 5)).equals(
        frame(score_recommendations(fs, LoadedModel.from_file(recommender), 5)))
    np.testing.assert_allclose(frame(score_ltv(fs, combined))["expected_value"],
                               frame(score_ltv(fs, LoadedModel.from_file(ltv_head)))["expected_value"], rtol=1e-6)
    with pytest.raises(ValueError, match="reads the user vector"):  # such a head needs its own encoder
        combine_heads(recommender, checkpoint(fs, tmp_path / "coupled.pt", ltv_user_dim=8), tmp_path / "x.pt")


def test_batches_are_streamed_per_chunk(case):
    _, fs, _, loaded = case
    batches = list(stream_scores(fs, loaded, 5, chunk=2))  # 40 users, 2 per product, 8 products per batch
    assert len(batches) == 3 and all(r.schema == RECS_SCHEMA and r.num_rows <= 16 * 5 for r, _ in batches)


def test_the_automatic_chunk_is_bounded_by_the_budget():
    assert auto_chunk_size(50_001, 50, 64, budget_bytes=1 << 30) == (1 << 30) // (12 * 50_001 + 4 * 50 * 64 * 16)
    assert auto_chunk_size(50_001, 50, 64, budget_bytes=1) == 16
    assert 16 <= auto_chunk_size(1_000, 50, 64) <= 65536


@pytest.mark.slow
@pytest.mark.parametrize("rank_by,time_gaps", [("relevance", False), ("expected_value", True)])
def test_the_spark_path_gives_the_local_top_n(case, gap_case, tmp_path, rank_by, time_gaps):
    folder, fs, ckpt, loaded = gap_case if time_gaps else case
    out = tmp_path / "spark"
    cap = 2 if rank_by == "relevance" else None
    cmd = [str(Path(sys.executable).parent / "spark-submit"), "--master", "local[2]", "--conf", "spark.ui.enabled=false",
           str(ROOT / "jobs" / "score.py"), "--features", str(folder), "--checkpoint", str(ckpt), "--out", str(out),
           "--top-n", "5", "--rank-by", rank_by, "--users-per-batch", "7"] + (["--max-per-category", "2"] if cap else [])
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    spark_recs = frame(pq.read_table(out / "recommendations").select(RECS_SCHEMA.names).cast(RECS_SCHEMA))
    local = frame(score_recommendations(fs, loaded, 5, rank_by, max_per_category=cap))
    assert spark_recs[["user_id", "rank", "item_id"]].equals(local[["user_id", "rank", "item_id"]])
    np.testing.assert_allclose(spark_recs["score"], local["score"], rtol=1e-4)
    spark_ltv = frame(pq.read_table(out / "ltv_estimates").to_pandas().pipe(pa.Table.from_pandas, preserve_index=False))
    np.testing.assert_allclose(spark_ltv["expected_value"], frame(score_ltv(fs, loaded))["expected_value"], rtol=1e-4)


def test_the_scores_writer_publishes_another_familys_expected_values(tmp_path):
    """With the LTV backtest's pick not ZILN, each customer's expected_value is that family's, labelled with it;
    p_active stays the head's; a customer the family has no estimate for stops the stage."""
    from ltvrec import serving
    from models.score import LTV_SCHEMA

    meta = serving.run_metadata("2026-01-01", "m", {"recommendation": "1", "ltv": "1"}, "r", 90, ltv_model="gbdt")
    batch = pa.RecordBatch.from_arrays([pa.array(["u1", "u2"]), pa.array([0.2, 0.9]), pa.array([5.0, 50.0])],
                                       schema=LTV_SCHEMA)
    with serving.ScoresWriter(tmp_path, meta, expected_values=pd.Series([7.0, 70.0], index=["u2", "u1"])) as writer:
        writer.write("ltv_estimates", batch)
    got = pq.read_table(tmp_path / "ltv_estimates.parquet").to_pandas()
    assert got[["user_id", "p_active", "expected_value", "ltv_model"]].values.tolist() == [
        ["u1", 0.2, 70.0, "gbdt"], ["u2", 0.9, 7.0, "gbdt"]]
    with pytest.raises(ValueError, match="no estimate for customer 'u2'"):
        with serving.ScoresWriter(tmp_path, meta, expected_values=pd.Series([1.0], index=["u1"])) as writer:
            writer.write("ltv_estimates", batch)
