"""Data loading for ECOS: the built-in digits pool, user data, and the client/pool split."""

from ecos_core.data.builtin import (
    ANIMAL_CLASSES,
    BUILTIN_DOMAINS,
    DISTRACTOR_DOMAINS,
    default_cache_dir,
    load_domain,
    load_domains,
    render_synth_digits,
)
from ecos_core.data.safe_pickle import RestrictedUnpickler, safe_load_pickle
from ecos_core.data.split import REGIMES, domain_counts, split_client_pool, subsample
from ecos_core.data.user import image_folder_classes, load_dataset, load_image_folder, load_manifest

__all__ = [
    "ANIMAL_CLASSES",
    "BUILTIN_DOMAINS",
    "DISTRACTOR_DOMAINS",
    "REGIMES",
    "RestrictedUnpickler",
    "default_cache_dir",
    "domain_counts",
    "image_folder_classes",
    "load_dataset",
    "load_domain",
    "load_domains",
    "load_image_folder",
    "load_manifest",
    "render_synth_digits",
    "safe_load_pickle",
    "split_client_pool",
    "subsample",
]
