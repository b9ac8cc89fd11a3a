import os

import pytest
import torch

# Keep test runs on this 2-core CPU predictable.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def tiny_model_cfg():
    from refdet.config import ModelConfig

    return ModelConfig(depth_multiple=0.33, width_multiple=0.125, embed_dim=32)
