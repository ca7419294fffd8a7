"""Load a trained model from a checkpoint file or from the MLflow Model Registry."""

from __future__ import annotations

from pathlib import Path

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
        self.scaler = FeatureScaler.from_dict(ckpt["scaler"])
        self.run_config: dict = ckpt["run_config"]

    @classmethod
    def from_file(cls, path: Path) -> "LoadedModel":
        return cls(torch.load(path, map_location="cpu", weights_only=False))

    @classmethod
    def from_registry(cls, model_uri: str) -> "LoadedModel":
        """e.g. models:/ltvrec@champion: the checkpoint is logged beside the model as an extra file."""
        import mlflow

        local = Path(mlflow.artifacts.download_artifacts(model_uri))
        found = sorted(local.rglob("best.pt"))
        if not found:
            raise FileNotFoundError(f"{model_uri}: no checkpoint (best.pt) among the model's files")
        return cls.from_file(found[0])
