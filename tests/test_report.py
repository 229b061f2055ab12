"""The round's report helpers (ecos_core.report)."""

import pandas as pd

from ecos_core.report import results_plot


def test_round_plot_survives_every_selection_empty():
    results = pd.DataFrame({"method": ["ecos", "oracle"], "client_id": "client-0", "accuracy": [float("nan")] * 2})
    assert results_plot(results, pd.DataFrame(), "all empty").startswith(b"\x89PNG")
