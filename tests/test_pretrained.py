"""Starting from YOLOv8n weights: the mapping against the reference model's own parameter
names and shapes (tests/fixtures/yolov8n_state_dict.json, made by
benchmarks/make_yolov8n_fixture.py), errors, and -- where the library is installed -- the same
box outputs as the reference model from the same weights."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from refdet.config import ModelConfig
from refdet.model import build_model
from refdet.model.pretrained import PretrainedError, load_pretrained, map_state_dict

FIXTURE = Path(__file__).parent / "fixtures" / "yolov8n_state_dict.json"


def reference_like() -> dict:
    """A state dict with the reference YOLOv8n's names and shapes (random values)."""
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(shape, generator=g) if shape else torch.tensor(0)
            for k, shape in json.loads(FIXTURE.read_text())["tensors"]}


def test_every_backbone_neck_and_box_tensor_is_mapped_with_its_shape():
    ref = reference_like()
    mapped, skipped = map_state_dict(ref)
    ours = build_model(ModelConfig()).state_dict()
    query_branch = {k for k in ours if k.startswith(("backbone.", "neck.", "head.box."))}
    assert set(mapped) == query_branch  # all of them, nothing else
    assert all(ours[k].shape == v.shape for k, v in mapped.items())
    assert {k.split(".")[2] for k in skipped} == {"cv3", "dfl"}  # class branch and DFL: not loaded
    assert len(mapped) + len(skipped) == len(ref)


def test_loading_copies_the_weights_and_logs_what_was_skipped(tmp_path):
    ref = reference_like()
    torch.save(ref, tmp_path / "yolov8n_state_dict.pt")
    model = build_model(ModelConfig())
    lines = load_pretrained(model, tmp_path / "yolov8n_state_dict.pt")
    sd = model.state_dict()
    assert torch.equal(sd["backbone.stem.0.conv.weight"], ref["model.0.conv.weight"])
    assert torch.equal(sd["head.box.2.2.bias"], ref["model.22.cv2.2.2.bias"])
    assert "loaded" in lines[0] and "class branch" in lines[1] and "fusion" in lines[2]


def test_wrong_shapes_and_foreign_files_name_the_problem(tmp_path):
    torch.save(reference_like(), tmp_path / "n.pt")
    small = build_model(ModelConfig(width_multiple=0.125))
    with pytest.raises(PretrainedError, match="first mismatching key backbone.stem.0.conv.weight"):
        load_pretrained(small, tmp_path / "n.pt")
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(PretrainedError, match="'encoder.weight' is not a YOLOv8-layout key"):
        load_pretrained(build_model(ModelConfig()), tmp_path / "foreign.pt")
    (tmp_path / "junk.pt").write_bytes(b"not torch")
    with pytest.raises(PretrainedError, match="weights_only=True"):
        load_pretrained(build_model(ModelConfig()), tmp_path / "junk.pt")


def test_train_cli_exits_2_on_a_wrong_pretrained_file(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not torch")
    r = subprocess.run([sys.executable, "-m", "refdet.train", "--config", "smoke", "--pretrained", str(tmp_path / "junk.pt"),
                        "--epochs", "1", "--steps_per_epoch", "1", "--output_dir", str(tmp_path / "out"), "--no-progress"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)  # the preset's data lands there
    assert r.returncode == 2 and "junk.pt" in r.stderr and "Traceback" not in r.stderr


def test_query_branch_reproduces_the_reference_box_outputs():
    """Measured where the library is importable (it is no dependency): the reference model
    with random weights, those weights loaded into RefDet, the same input; the box branch's
    raw DFL logits must agree."""
    tasks = pytest.importorskip("ultralytics.nn.tasks")
    torch.manual_seed(0)
    ref = tasks.DetectionModel("yolov8n.yaml", nc=80, verbose=False).eval()
    ours = build_model(ModelConfig()).eval()
    mapped, _ = map_state_dict(ref.state_dict())
    ours.load_state_dict(mapped, strict=False)
    x = torch.rand(2, 3, 160, 160)
    with torch.no_grad():
        ref.model[-1].training = True  # the Detect layer returns its raw per-level maps
        raw = ref(x)  # 8.4: {"boxes": [B, 64, A], ...}; earlier: [B, 64 + 80, H, W] per level
        if isinstance(raw, dict):
            ref_box = raw["boxes"].transpose(1, 2)
        else:
            ref_box = torch.cat([r[:, :64].flatten(2) for r in raw], 2).transpose(1, 2)
        out = ours(x, None, None)["box_logits"]
    assert out.shape == ref_box.shape
    assert torch.allclose(out, ref_box, atol=1e-4), (out - ref_box).abs().max()
