"""Does the search earn its compute? The replay benchmark's command line (benchmarks/replay/cli.py).

    python benchmarks/replay_search.py lcbench:167168 --seeds 30
    python benchmarks/replay_search.py model:benchmarks/curves/smoke.jsonl --noise measured --seeds 30
    python benchmarks/replay_search.py benchmarks/curves/hazard.jsonl --strategies default default_health_fail \
        --concurrency 2 8 --budget 30 --seeds 100
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.replay.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
