"""The RefDet model: build with `build_model(ModelConfig)`."""

from refdet.config import ModelConfig
from refdet.model.refdet import RefDet


def build_model(cfg: ModelConfig) -> RefDet:
    return RefDet(cfg)


__all__ = ["RefDet", "build_model"]
