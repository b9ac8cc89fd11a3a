"""The search on a simulated multi-node cluster (ray.cluster_utils.Cluster) with logical GPUs:
`gpu: 0.5` packs two trials per GPU; a worker node is removed mid-search and no trial is lost."""

import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest
from search_fixtures import write_space

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(monkeypatch):
    d = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's socket paths must stay < 107 bytes
    (Path(d) / "ray").mkdir()
    monkeypatch.setenv("RAY_TMPDIR", d)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    workers = [c.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
    yield c, workers
    import ray

    ray.shutdown()
    c.shutdown()
    shutil.rmtree(d, ignore_errors=True)


def attempts(exp) -> list[tuple[tuple[str, str], float, float]]:
    """Each run of a trial, from its training.log: ((node, CUDA_VISIBLE_DEVICES), first, last time)."""
    out = []
    for log in exp.glob("*/refdet/training.log"):
        where, t0, t1 = None, 0.0, 0.0
        for line in log.read_text().splitlines():
            ts = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))
            m = re.search(r"trial on node (\S+) device \S+ CUDA_VISIBLE_DEVICES=(\S*)", line)
            if m:
                if where is not None:
                    out.append((where, t0, t1))
                where, t0 = (m.group(1), m.group(2)), ts
            t1 = ts
        if where is not None:
            out.append((where, t0, t1))
    return out


def test_search_survives_losing_a_worker(tiny_dataset, tmp_path, cluster):
    import ray

    c, workers = cluster
    space = write_space(tmp_path, tiny_dataset, "cluster", num_samples=4, max_t=4, steps=6, lr_high=0.01,
                        initial_lr=0.002, initial_clip=10.0, resources={"cpu": 0.5, "gpu": 0.5},
                        max_concurrent=4)
    exp = tmp_path / "results" / "cluster"
    ray.init(address=c.address)
    assert ray.cluster_resources()["GPU"] == 2.0
    removed = {}

    def remove_worker_once_trials_run():
        deadline = time.time() + 240
        while time.time() < deadline:
            if len(list(exp.glob("*/checkpoint_*"))) >= 2:
                c.remove_node(workers[0])
                removed["at"] = time.time()
                return
            time.sleep(0.3)

    t = threading.Thread(target=remove_worker_once_trials_run, daemon=True)
    t.start()
    from tune.run import main

    rc = main(["--space", str(space), "--storage", str(tmp_path / "results"), "--address", c.address,
               "--max-failures", "3"])
    t.join(timeout=10)
    assert rc == 0
    assert "at" in removed  # the worker really went away mid-search
    import csv

    with open(exp / "leaderboard.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4
    assert not [r for r in rows if r["stop_reason"] in ("error", "running")], rows  # none lost, none errored
    # the removal killed running trials, which resumed elsewhere from their checkpoints
    assert list(exp.glob("*/error.txt"))
    # gpu: 0.5 packed two trials onto one logical GPU at once (same node, same
    # CUDA_VISIBLE_DEVICES, overlapping in time) before the node was removed
    runs = attempts(exp)
    assert runs and all(where[1] != "" for where, _, _ in runs), runs  # every trial was given a GPU
    before = [r for r in runs if r[1] < removed["at"]]
    together = [(a, b) for i, a in enumerate(before) for b in before[i + 1:]
                if a[0] == b[0] and a[1] <= b[2] and b[1] <= a[2]]
    assert together, runs
