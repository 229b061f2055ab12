"""Typed settings of a round (pydantic): what a person fills in, with the defaults we chose."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ecos_core.data.domains import BUILTIN_DOMAINS, DISTRACTOR_DOMAINS
from ecos_core.embedding.feature_space import BACKBONES, DEFAULT_BACKBONE, SHA256_PATTERN, USER_MODEL, Preprocessing, unknown_backbone
from ecos_core.sampling.samplers import SAMPLERS


# The default pool is "large and heterogeneous" the way open-source pools are: two
# thirds off-task images (animal silhouettes, letters drawn like the synth digits),
# the rest digits from four domains, the client's own domain a small part of it.
DEFAULT_DOMAIN_SIZES = {"mnist": 3000, "optdigits": 1797, "mnistm": 4000, "synth": 3000, "animal": 10000, "letters": 10000}


class TrainConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    max_epochs: int = Field(20, ge=1)
    max_steps: int = Field(900, ge=1)  # caps large proxy sets (e.g. the full pool)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    max_shift: float = Field(0.1, ge=0, le=0.5)  # random translation, fraction of the side
    num_classes: int = Field(10, ge=2)
    width: int = Field(32, ge=4)
    accelerator: str = "auto"
    devices: int | str = "auto"
    strategy: str = "auto"
    progress_bar: bool = False
    # test on the simulated client's test split; False with real devices (their test data
    # never leaves them: the model goes to the device, which can evaluate it there)
    evaluate: bool = True


class DataConfig(BaseModel):
    """The pool and the client's private data: built-in domains, split with a seed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    domain_sizes: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_DOMAIN_SIZES))
    client_domain: str = "mnistm"
    regime: Literal["id+ood", "ood"] = "id+ood"
    n_client_train: int = Field(1000, ge=1)
    n_client_test: int = Field(1000, ge=1)
    # the pool: None = the built-in domains above; else an ingested pool's URL (`ecos pool
    # ingest`), or a manifest / image folder, ingested into the store on first use
    pool: str | None = None
    # the simulated client's own dataset (builtin:<d>, folder, manifest), split into its
    # train and test; None = carved out of the built-in client_domain
    client: str | None = None

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(self.domain_sizes)

    @field_validator("domain_sizes")
    @classmethod
    def _known_domains(cls, value: dict[str, int]) -> dict[str, int]:
        unknown = [d for d in value if d not in BUILTIN_DOMAINS]
        if unknown or not value:
            raise ValueError(f"unknown domains {unknown}; built-in: {list(BUILTIN_DOMAINS)}")
        if any(n < 10 for n in value.values()):
            raise ValueError(f"every domain needs at least 10 samples, got {value}")
        return value

    @model_validator(mode="after")
    def _client_in_domains(self) -> "DataConfig":
        if self.client is not None:  # its own dataset: its size is checked when it is loaded
            return self
        if self.client_domain not in self.domain_sizes:
            raise ValueError(f"client_domain {self.client_domain!r} is not one of {list(self.domain_sizes)}")
        needed = self.n_client_train + self.n_client_test
        if self.domain_sizes[self.client_domain] < needed:
            raise ValueError(f"client domain {self.client_domain!r} has {self.domain_sizes[self.client_domain]} samples, "
                             f"fewer than the client's {needed} (train + test)")  # fmt: skip
        return self


class IndexConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    k: int = Field(100, ge=2)  # ≈ the paper's 2e5-byte DomainNet probe at d=512
    niter: int = Field(25, ge=1)
    nredo: int = Field(3, ge=1)
    # the feature space: mobilenet_v2 | efficientnet_lite0 (weights shipped in packages) |
    # onnx (your own ONNX file at model_url, pinned by model_sha256, run by onnxruntime; its
    # feature_dim is measured when not given). Devices must have the same backbone.
    backbone: str = DEFAULT_BACKBONE
    model_url: str | None = Field(None, min_length=1, validate_default=True)
    model_sha256: str | None = Field(None, pattern=SHA256_PATTERN, validate_default=True)
    feature_dim: int | None = Field(None, ge=1, le=100_000, validate_default=True)
    preprocessing: Preprocessing = Preprocessing()
    batch_size: int = Field(128, ge=1)  # faster than 256+ on 2 CPU cores
    # an ingested pool trains KMeans on a seeded sample of k × this many points (faiss's own
    # default cap); the assignment pass then covers every image
    points_per_centroid: int = Field(256, ge=1)
    # "auto": a Dask worker with a CUDA GPU embeds its shards on it (its features are
    # cached under their own key); "cpu": always the CPU, bit-identical to the in-memory path
    device: Literal["auto", "cpu"] = "auto"
    # "ball": a client sample counts only inside its nearest cluster's ball (the probe sends
    # the K radii); "nearest": it counts at its nearest centroid however far (the paper's rule)
    coverage: Literal["ball", "nearest"] = "ball"
    # "combined": the backbone's features beside a small CNN the cloud trains on adapted_size
    # annotated pool images (annotators answer "none" for off_task_domains) and ships in the
    # probe (ecos_core.embedding.adapted_space; docs/benchmarks.md measures what it wins); "backbone": alone
    feature_space: Literal["backbone", "combined"] = Field(
        "combined", description="combined: the backbone beside a CNN trained on annotated pool images; backbone: alone")
    adapted_size: int = Field(3000, ge=50, description="annotated pool images the adapted CNN trains on")
    adapted_width: int = Field(16, ge=4, le=128, description="the adapted CNN's width (16: 99k parameters, 403 KB)")
    adapted_steps: int = Field(900, ge=1, description="training steps of the adapted CNN (batch 64, as the benchmark's)")
    off_task_domains: tuple[str, ...] = Field(DISTRACTOR_DOMAINS, description="pool domains annotators call 'none'")

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        if value not in BACKBONES:
            raise ValueError(unknown_backbone(value))
        return value

    @field_validator("model_url", "model_sha256", "feature_dim")
    @classmethod
    def _user_model_only(cls, value: object, info: ValidationInfo) -> object:
        backbone = info.data.get("backbone")
        if backbone == USER_MODEL and value is None and info.field_name != "feature_dim":
            raise ValueError(f"backbone {USER_MODEL!r} needs {info.field_name} (your model file's URL and its sha256)")
        if backbone is not None and backbone != USER_MODEL and value is not None:
            raise ValueError(f"{info.field_name} is only for backbone {USER_MODEL!r} (the backbone is {backbone!r})")
        return value


# ECOSSampler's keywords: the fields SamplingConfig (rounds) and GridSpec (benchmark) both carry
RULE_FIELDS = ("threshold_sigmas", "threshold_share", "exhausted", "floor_sigmas", "group_sizes", "group_sigmas")


def check_group_sizes(value: tuple[float, ...]) -> tuple[float, ...]:
    """The hierarchy's levels: clusters per group, each > 0, finest (smallest) first."""
    if any(not g > 0 for g in value) or list(value) != sorted(value):
        raise ValueError(f"group_sizes must be > 0, finest (smallest) first, got {list(value)}")
    return value


class SamplingConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    budget: int = Field(1000, ge=1)
    samplers: tuple[str, ...] = ("ecos", "oracle", "random", "kcenter")
    threshold_sigmas: float = Field(2.0, ge=0)  # 3σ lost whole digit classes of small clients (docs/benchmarks.md)
    threshold_share: float = Field(0.005, ge=0, lt=1)
    # "stop": leave budget unspent rather than sample clusters the client does not cover
    exhausted: Literal["fill", "stop"] = "stop"
    floor_sigmas: float = Field(1.0, ge=0)  # "stop" goes past the kept clusters only down to this score
    # the cluster hierarchy (ecos_core.sampling.hierarchy): the K clusters are also read in nested groups
    # of about this many neighbours (finest first), a group is kept when its summed score reaches
    # group_sigmas·σ·√members; free in ε (post-processing of the same scores); () turns it off
    group_sizes: tuple[float, ...] = (10.0, 20.0, 30.0)
    group_sigmas: float = Field(2.0, ge=0)
    # spend ECOS's (and the Oracle's) cluster shares class by class, by the cloud's kNN class guess of
    # each pool image in the combined space (ecos_core.sampling.class_share; "none" never picked):
    # for clients whose domain the pool lacks. A backbone-space index has no guesses: the plain rule
    class_balance: bool = Field(True, description="spend the budget class by class, by the cloud's class guess of each "
                                "pool image (combined feature space only; for clients whose domain the pool lacks)")
    # K-Center on an ingested pool runs over a seeded uniform sample of this many images
    # (O(N·B) over millions is hours); a smaller pool is used whole, exactly as before
    kcenter_sample: int = Field(50_000, ge=1)

    @field_validator("samplers")
    @classmethod
    def _known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [s for s in value if s not in SAMPLERS]
        if unknown:
            raise ValueError(f"unknown samplers {unknown}; known: {list(SAMPLERS)}")
        return value

    @field_validator("group_sizes")
    @classmethod
    def _group_sizes(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        return check_group_sizes(value)

    def rule_params(self) -> dict:
        """The ECOS rule's settings (ECOSSampler's keywords), for ECOS and the Oracle alike."""
        return {name: getattr(self, name) for name in RULE_FIELDS}


class DaskConfig(BaseModel):
    """Where the mapped steps of an ingested pool run (ingest, features, assignment)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    address: str | None = None  # an existing cluster, tcp://host:8786; None: a local one
    workers: int | None = Field(None, ge=1)  # local cluster's worker processes (default: one per core)


class RoundConfig(BaseModel):
    """One outsourcing round. `seed` drives every random step (split, KMeans, sampling,
    training, and the simulated client's noise), so a rerun selects the same samples."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 0
    sigma: float = Field(6.1, gt=0)  # ε ≈ 0.58 at δ=1e-5 (PLD), the paper's setting
    delta: float = Field(1e-5, gt=0, lt=1)
    clients: tuple[str, ...] = Field(("client-0",), min_length=1)
    quorum: int = Field(1, ge=1)
    deadline_s: float = Field(600.0, ge=2, le=604_800)  # ≤ 7 days: the longest a pre-signed S3 URL may live
    poll_s: float = Field(1.0, gt=0)
    local_baseline: bool = True  # also train on the client's own data ("Local")
    domain_report: bool = True  # each domain's Local accuracy (is every domain learnable?)
    data: DataConfig = DataConfig()
    index: IndexConfig = IndexConfig()
    sampling: SamplingConfig = SamplingConfig()
    train: TrainConfig = TrainConfig()
    dask: DaskConfig = DaskConfig()

    def for_real_devices(self) -> "RoundConfig":
        """Real devices keep their data: no Oracle (it needs their features), no Local (their
        training data), no accuracy on their test data, and no built-in per-domain check."""
        return self.model_copy(update={
            "sampling": self.sampling.model_copy(update={"samplers": tuple(m for m in self.sampling.samplers if m != "oracle")}),
            "train": self.train.model_copy(update={"evaluate": False}), "local_baseline": False, "domain_report": False})  # fmt: skip

    @model_validator(mode="after")
    def _quorum(self) -> "RoundConfig":
        if self.quorum > len(self.clients):
            raise ValueError(f"quorum {self.quorum} is larger than the {len(self.clients)} expected clients")
        return self
