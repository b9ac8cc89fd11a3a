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


def tiny_train_config(root, out=None, **overrides):
    """A TrainConfig that trains in seconds on the tiny dataset."""
    from refdet.config import TrainConfig

    base = {
        "model.width_multiple": 0.125, "model.embed_dim": 32,
        # the given dataset as it is (never regenerated); no validation scenes, no initial weights
        "data.root": str(root), "data.synthetic": False, "data.val_root": "", "data.synthetic_val_scenes": 0,
        "checkpoint": "",
        "data.img_size": 128, "data.ref_size": 64, "data.n_way": 2, "data.n_query": 2,
        "data.split": "video", "data.val_frame_stride": 4, "data.val_fraction": 0.34,
        "epochs": 2, "steps_per_epoch": 4, "batch_size": 4, "device": "cpu", "num_threads": 2, "val_interval": 1,
        "optim.lr": 2e-3, "optim.warmup_epochs": 0, "health.cpe_zero_window": 4,
        "output_dir": str(out or "unused"),
    }
    base.update(overrides)
    return TrainConfig.preset("smoke").with_overrides(base)


@pytest.fixture
def tiny_cfg(tiny_dataset, tmp_path):
    return lambda **kw: tiny_train_config(tiny_dataset, tmp_path / "out", **kw)


@pytest.fixture(scope="session")
def learn_dataset(tmp_path_factory):
    """The smoke preset's kind of data, smaller and easier: 12 videos x 48 frames, 160x96, large objects."""
    from refdet.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("learn") / "syn", videos=12, frames=48, size=(160, 96), seed=0,
                    object_scale=0.6)


def foreign_checkpoint(path, embed_dim: int = 64):
    """A RefDet checkpoint of another model size (the tiny configs use embed_dim 32): a file a
    run must refuse, naming it, rather than start from random weights silently."""
    import torch

    from refdet.config import TrainConfig
    from refdet.model import build_model

    cfg = TrainConfig.from_dict({"model": {"width_multiple": 0.125, "embed_dim": embed_dim}})
    torch.save({"model": build_model(cfg.model).state_dict(), "config": cfg.to_dict()}, path)
    return path
