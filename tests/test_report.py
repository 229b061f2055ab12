"""The round's report helpers (ecos_core.report)."""

import re

import pandas as pd

from ecos_core.report import results_plot


def test_round_plot_survives_every_selection_empty():
    results = pd.DataFrame({"method": ["ecos", "oracle"], "client_id": "client-0", "accuracy": [float("nan")] * 2})
    assert results_plot(results, pd.DataFrame(), "all empty").startswith(b"\x89PNG")


def test_step_times_survive_a_suspend_and_resume(tmp_path):
    """The resumed run re-runs from the top (cache hits in no time): the report keeps each
    step's first time, and the wait runs from the probe's publication to the resume."""
    import time

    from tasks.steps import StepLog

    url = str(tmp_path / "store")
    first = StepLog(url, "r1")
    first.add("features", 2.0)
    time.sleep(0.3)
    first.lap("index", minus=0.1)
    first.lap("probe")
    first.mark("probe published")
    time.sleep(1.0)  # suspended: this process ends, the watcher resumes the round later
    resumed = StepLog(url, "r1")
    resumed.add("features", 2.0)  # the cached index reports its original feature time again
    resumed.lap("index", minus=2.0)  # a cache hit: would be negative
    resumed.lap("probe")
    resumed.lap("wait for responses", since_mark="probe published")
    resumed.lap("training")
    steps = StepLog(url, "r1").steps
    assert list(steps) == ["features", "index", "probe", "wait for responses", "training"]
    assert steps["index"] == first.steps["index"] >= 0.15 and all(v >= 0 for v in steps.values())
    assert steps["wait for responses"] >= 1.0


def test_the_answers_tables_stay_readable_with_many_long_refusals():
    """Every cell fits a 1440-px screen however long the reasons, and refusals are counted by
    reason, one row each (the full texts stay in ledger.json)."""
    from tasks.report import DETAIL_CHARS, REASON_CHARS, answers_frame, refusals_frame

    url = "s3://ecos/rounds/r1/responses"
    bomb = "signed response is not valid JSON (" + "[" * 5000 + ")"
    rejected = [{"key": f"{url}/c{i % 3}.json", "reason": f"{url}/c{i % 3}.json: {bomb}"} for i in range(30)]
    rejected.append({"key": f"{url}/c1.json", "reason": f"{url}/c1.json: bad signature for client 'c1'"})
    responses = {"accepted": {"c0": {"bytes": 650}}, "rejected": rejected}
    answers, refusals = answers_frame(["c0", "c1", "c2", "c3"], responses), refusals_frame(responses)
    assert answers["detail"].str.len().max() <= DETAIL_CHARS and refusals["reason"].str.len().max() <= REASON_CHARS
    assert not answers["detail"].str.contains("s3://").any()
    assert dict(zip(answers["client_id"], answers["status"])) == {"c0": "accepted", "c1": "refused", "c2": "refused",
                                                                   "c3": "missing"}  # fmt: skip
    assert refusals["uploads"].tolist() == [30, 1] and refusals["uploaders"].tolist() == ["c0, c1, c2", "c1"]


def test_an_uploaders_text_cannot_break_the_reports_markdown():
    from ecos_core.report import markdown_table
    from tasks.report import answers_frame, uploaders_safe

    evil = "s3://b/r/c9.json: unknown client 'a|b' ![x](http://evil) <img src=x>"
    text = markdown_table(uploaders_safe(answers_frame(["c0"], {"accepted": {}, "rejected": [{"key": "r/c9.json",
                                                                                            "reason": evil}]})))  # fmt: skip
    assert all(line.count("|") - line.count("\\|") == 5 for line in text.splitlines())  # 4 columns, no more
    assert not re.search(r"(?<!\\)(!\[|<img)", text)  # no unescaped image or HTML
