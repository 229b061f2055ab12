"""The fault run's 3-round version (benchmarks/faults.py runs 30): real S3, Prefect
server and supervised watcher; random faults; the invariant checked after each round."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import faults  # noqa: E402

pytestmark = pytest.mark.slow


def test_three_rounds_of_random_faults_lose_no_honest_answer():
    counts = faults.run(rounds=3, seed=1, process_faults=False)  # those: test_infra_zombie.py, test_infra_live.py
    print(dict(counts), file=sys.stderr)
    assert counts["rounds"] == 3 and counts["honest answers"] > 0
    assert counts["honest answers lost"] == 0
    assert sum(counts[f] for f in faults.FAULTS) >= 3  # the faults really happened
