"""Data loading for ECOS: the built-in digits pool, user data, and the client/pool split.

Names are loaded on first use (PEP 562), so importing a light submodule such as
ecos_core.data.domains does not pull in pandas and PIL."""

from importlib import import_module

_WHERE = {
    "ANIMAL_CLASSES": "builtin", "BUILTIN_DOMAINS": "domains", "DISTRACTOR_DOMAINS": "domains",
    "default_cache_dir": "builtin", "load_domain": "builtin", "load_domains": "builtin", "render_synth_digits": "builtin",
    "RestrictedUnpickler": "safe_pickle", "safe_load_pickle": "safe_pickle",
    "REGIMES": "split", "domain_counts": "split", "split_client_pool": "split", "subsample": "split",
    "image_folder_classes": "user", "load_dataset": "user", "load_image_folder": "user", "load_manifest": "user",
}  # fmt: skip
__all__ = sorted(_WHERE)


def __getattr__(name: str):  # noqa: ANN202
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
