"""A round small enough for tests that run `ecos run` as a user would (about a minute)."""

TINY_ROUND = {
    "data": {"domain_sizes": {"mnist": 200, "mnistm": 200, "synth": 200, "animal": 200}, "n_client_train": 80,
             "n_client_test": 80},
    "index": {"k": 8, "niter": 10, "nredo": 1, "batch_size": 128, "adapted_steps": 10},
    "sampling": {"budget": 60},
    "train": {"max_epochs": 2, "max_steps": 10, "batch_size": 32},
    "deadline_s": 120,
    "poll_s": 0.3,
    "local_baseline": False,
    "domain_report": False,
}
