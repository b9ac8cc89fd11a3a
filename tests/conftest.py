import os

import pytest
import torch

# Keep test runs on this 2-core CPU predictable.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def tiny_model_cfg():
    from refdet.config import ModelConfig

    return ModelConfig(depth_multiple=0.33, width_multiple=0.125, embed_dim=32)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A small synthetic dataset (6 videos x 48 frames, 256x144), built once per session."""
    from refdet.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("data") / "syn", videos=6, frames=48, size=(256, 144), seed=0)
