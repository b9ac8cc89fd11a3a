import pytest

from refdet.config import ConfigError, TrainConfig, field_type


def test_yaml_round_trip(tmp_path):
    cfg = TrainConfig.preset("smoke").with_overrides({"optim.lr": 3e-4, "loss.dfl_weight": 0.75})
    cfg.to_yaml(tmp_path / "c.yaml", header="a header\nwith two lines")
    again = TrainConfig.from_yaml(tmp_path / "c.yaml")
    assert again == cfg
    assert (tmp_path / "c.yaml").read_text().startswith("# a header\n")


def test_search_parameters_live_in_config():
    for key, typ in [("optim.gradient_clip_norm", float), ("loss.dfl_weight", float),
                     ("optim.warmup_epochs", int), ("optim.lr", float), ("epochs", int), ("batch_size", int),
                     ("data.n_way", int), ("data.n_query", int), ("stage", int), ("seed", int),
                     ("val_interval", int), ("device", str), ("mixed_precision", bool)]:
        assert field_type(key) is typ


@pytest.mark.parametrize("data, match", [
    ({"optim": {"lrr": 1}}, "optim.lrr: unknown key"),
    ({"optim": {"lr": "fast"}}, "optim.lr: expected float"),
    ({"optim": {"warmup_epochs": 1.5}}, "optim.warmup_epochs: expected int"),
    ({"optim": {"warmup_epochs": True}}, "optim.warmup_epochs: expected int"),
    ({"model": 3}, "model: expected a mapping"),
    ({"stage": 4}, "stage: must be 1 or 2"),
    ({"optim": {"lr": -1}}, "optim.lr: must be > 0"),
    ({"optim": {"lr": ".nan"}}, "optim.lr"),
    ({"data": {"img_size": 100}}, "data.img_size"),
    ({"device": "cudaX"}, "device: must be auto, cpu, cuda or cuda:N"),  # was taken for cuda
    ({"device": "cuda:"}, "device: must be"),
])
def test_bad_values_name_the_key(data, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig.from_dict(data)


def test_yaml_scientific_strings_are_floats(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  lr: 1e-4\n")  # YAML 1.1 reads 1e-4 as a string
    assert TrainConfig.from_yaml(p).optim.lr == 1e-4


def test_unsafe_or_broken_yaml_is_a_config_error(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("!!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        TrainConfig.from_yaml(p)
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        TrainConfig.from_yaml(p)
    with pytest.raises(ConfigError, match="not found"):
        TrainConfig.from_yaml(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="unknown preset"):
        TrainConfig.preset("nope")


def test_field_type_rejects_unknown_paths():
    with pytest.raises(ConfigError, match="no key 'lrr'"):
        field_type("optim.lrr")
    with pytest.raises(ConfigError, match="section"):
        field_type("optim")


def test_synthetic_validation_scenes_need_a_val_root():
    with pytest.raises(ConfigError, match="data.synthetic_val_scenes"):
        TrainConfig.from_dict({"data": {"synthetic": True, "synthetic_val_scenes": 2}})
    with pytest.raises(ConfigError, match="data.synthetic_hard_negatives"):
        TrainConfig.from_dict({"data": {"synthetic_hard_negatives": 1.5}})



def test_smoke_preset_starts_from_the_shipped_checkpoint():
    """`preset:NAME` is the file beside the presets, wherever the package lives (a bare name
    only); the shipped start fits the smoke model exactly and was trained on episodes, so its
    reference fusion is loaded as trained (a non-episodic start would reset it)."""
    import torch

    from refdet.config import PRESET_DIR
    from refdet.engine.checkpoint import load_checkpoint
    from refdet.model import build_model

    cfg = TrainConfig.preset("smoke")
    # the name stays in written configs; each process resolves it against its own install
    assert cfg.checkpoint == "preset:smoke_stage1.pt" and cfg.resolve_paths("/elsewhere").checkpoint == cfg.checkpoint
    assert cfg.checkpoint_file == str(PRESET_DIR / "smoke_stage1.pt") and cfg.stage == 2
    state = load_checkpoint(cfg.checkpoint_file)
    made = state["config"]
    assert made["stage"] == 2 and made["data"]["episodic"] is True and made["model"] == cfg.to_dict()["model"]
    assert made["data"]["synthetic_hard_negatives"] == cfg.data.synthetic_hard_negatives
    build_model(cfg.model).load_state_dict(state["model"], strict=True)  # raises on any key or shape mismatch
    assert all(torch.isfinite(v.float()).all() for v in state["model"].values())
    for bad in ("preset:", "preset:../smoke.yaml", "preset:x/y.pt", "preset:.."):
        with pytest.raises(ConfigError, match="named without a folder"):
            TrainConfig.preset("smoke").with_overrides({"checkpoint": bad})
