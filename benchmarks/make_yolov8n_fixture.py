"""Writes tests/fixtures/yolov8n_state_dict.json: the parameter names and shapes of the
reference YOLOv8n (the popular detection library's `yolov8n.yaml`, 80 classes), which
refdet/model/pretrained.py maps onto RefDet's query branch.

    pip install --no-deps --target /tmp/ul ultralytics      # the library, beside this environment
    PYTHONPATH=/tmp/ul YOLO_OFFLINE=1 python benchmarks/make_yolov8n_fixture.py

No download: the model is built from its YAML (the names and shapes do not depend on weights).
"""

from __future__ import annotations

import json
from pathlib import Path

from ultralytics.nn.tasks import DetectionModel

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "yolov8n_state_dict.json"


def main() -> None:
    import ultralytics

    model = DetectionModel("yolov8n.yaml", nc=80, verbose=False)
    names = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    OUT.write_text(json.dumps({"source": f"ultralytics {ultralytics.__version__} DetectionModel('yolov8n.yaml', nc=80)",
                               "tensors": names}, indent=0))
    print(f"wrote {OUT}: {len(names)} tensors")


if __name__ == "__main__":
    main()
