"""Load a trained model from a checkpoint file or from the MLflow Model Registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.data import FeatureScaler
from models.sasrec import ModelConfig, SeqRecModel


class LoadedModel:
    """A model with the vocabulary and feature scaling it was trained with."""

    def __init__(self, ckpt: dict):
        self.model = SeqRecModel(ModelConfig(**ckpt["model_config"]))
        self.model.load_state_dict(ckpt["model"])
        self.model.eval()
        self.item_ids: list[str] = ckpt["item_ids"]
        # catalogue price by model item index (0 = padding); value-aware ranking multiplies by it
        self.item_price = np.asarray(ckpt["item_price"], dtype=np.float64)
        self.scaler = FeatureScaler.from_dict(ckpt["scaler"])
        # the LTV horizon its head was trained for (None: a checkpoint from before it was recorded)
        self.horizon_days: int | None = ckpt.get("horizon_days")

    @classmethod
    def from_file(cls, path: Path) -> "LoadedModel":
        return cls(torch.load(path, map_location="cpu", weights_only=False))

    @classmethod
    def from_registry(cls, model_uri: str) -> "LoadedModel":
        """e.g. models:/ltvrec@champion: the checkpoint is logged beside the model as an extra file."""
        return cls.from_file(registry_checkpoint(model_uri))


def registry_checkpoint(model_uri: str) -> Path:
    """Local path of a registered model's checkpoint file (downloaded from the MLflow artifact store)."""
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(model_uri))
    found = sorted(local.rglob("final.pt"))
    if not found:
        raise FileNotFoundError(f"{model_uri}: no checkpoint (final.pt) among the model's files")
    return found[0]


TEXT_NEIGHBOURS = 10  # a new item's embedding starts as the mean of its most similar known items' (by text)


def warm_start(model: SeqRecModel, ckpt: dict, item_ids: list[str]) -> dict[str, int]:
    """Initialise `model` from an earlier checkpoint (continual training on new data).

    Item embeddings are copied by item id; a new item's row starts as the similarity-weighted mean of the rows of
    the known items whose text is closest to its own (with item text; without, it keeps its fresh initialisation).
    Every other tensor is copied where its shape matches. Returns counts of what was carried over.
    """
    old_state, new_state = ckpt["model"], model.state_dict()
    old_index = {item: i + 1 for i, item in enumerate(ckpt["item_ids"])}
    pairs = [(i + 1, old_index[item]) for i, item in enumerate(item_ids) if item in old_index]
    copied, by_text = 0, 0
    with torch.no_grad():
        for name, tensor in new_state.items():
            old = old_state.get(name)
            if name == "item_emb.weight" and old is not None and old.shape[1] == tensor.shape[1] and pairs:
                new_rows, old_rows = (torch.tensor(x) for x in zip(*pairs))
                tensor[new_rows] = old[old_rows].to(tensor.dtype)
                copied += 1
                by_text = init_from_text_neighbours(new_state, [new for new, _ in pairs])
            elif name == "item_text":  # data, not learned: always this run's item texts
                continue
            elif old is not None and old.shape == tensor.shape:
                tensor.copy_(old)
                copied += 1
    model.load_state_dict(new_state)
    return {"tensors_copied": copied, "tensors_total": len(new_state), "items_carried": len(pairs),
            "items_new": len(item_ids) - len(pairs), "items_new_from_text": by_text}


def init_from_text_neighbours(state: dict[str, torch.Tensor], carried_rows: list[int]) -> int:
    """Set each new item's embedding row (a row of state's item_emb.weight not in `carried_rows`, padding row 0
    aside) to the mean of its TEXT_NEIGHBOURS most text-similar carried rows, weighted by cosine similarity (only
    positive ones count). Returns how many rows were set; 0 without item text."""
    text, emb = state.get("item_text"), state["item_emb.weight"]
    if text is None or not carried_rows:
        return 0
    carried = torch.tensor(sorted(carried_rows))
    new = torch.tensor(sorted(set(range(1, len(emb))) - set(carried_rows)), dtype=torch.long)
    if len(new) == 0:
        return 0
    unit = torch.nn.functional.normalize(text.float(), dim=1)
    similarity = unit[new] @ unit[carried].T
    top, which = similarity.topk(min(TEXT_NEIGHBOURS, len(carried)), dim=1)
    weights = top.clamp(min=0)
    has_neighbour = weights.sum(dim=1) > 0
    rows = (weights[:, :, None] * emb[carried][which]).sum(dim=1) / weights.sum(dim=1, keepdim=True).clamp(min=1e-12)
    emb[new[has_neighbour]] = rows[has_neighbour].to(emb.dtype)
    return int(has_neighbour.sum())


LTV_HEAD_CONFIG = ("n_ltv_features", "ltv_user_dim", "ltv_sigma_max", "ltv_prior", "ltv_correction_weight",
                   "ltv_level")


def combine_heads(recommender: Path, ltv: Path, out: Path) -> Path:
    """One checkpoint that recommends like `recommender` and estimates LTV like `ltv` (the model gate decides the
    two heads separately, ltvrec/promotion.py). Only a head that reads LTV features alone (ltv_user_dim = 0) can
    move to another model: one that reads the user vector needs its own encoder."""
    rec, head = (torch.load(p, map_location="cpu", weights_only=False) for p in (recommender, ltv))
    if head["model_config"]["ltv_user_dim"]:
        raise ValueError(f"{ltv}: its LTV head reads the user vector (ltv_user_dim > 0) and cannot be combined with "
                         "another model's encoder")
    state = {k: v for k, v in rec["model"].items() if not k.startswith(("ltv_head.", "ltv_user."))}
    for name, tensor in head["model"].items():
        if name.startswith("ltv_head."):
            state[name] = tensor
    combined = rec | {"model": state, "scaler": head["scaler"], "horizon_days": head.get("horizon_days"),
                      "model_config": rec["model_config"] | {k: head["model_config"][k] for k in LTV_HEAD_CONFIG
                                                             if k in head["model_config"]}}
    LoadedModel(combined)  # raises here, not in the scorer, if the head does not fit the encoder's width
    torch.save(combined, out)
    return out
