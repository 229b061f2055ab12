"""ECOS core library: pure functions and small classes, arrays in, arrays out.

Never imports Prefect: the edge client uses only this package, numpy and torch. One
subpackage per concept: data, pool, embedding, sampling, exchange, privacy, labeling,
training, storage, benchmark (the README's Layout says what each holds).
"""

import os

# Idle OpenMP threads sleep instead of spinning: on small shared machines (2 cores, a
# client process beside the flow) spinning made torch 3-100x slower. Only effective
# before torch is imported, hence here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
