"""The benchmark grid's axes and cells (the paper's Table 4): `GridSpec` names the axes
(client domains, regimes, budgets, samplers, applications, seeds, noise levels) and the
fixed setting; `grid_cells` expands it into `Cell`s with stable content-hash keys.
Running a cell is ecos_core.benchmark.run."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ecos_core.embedding.feature_space import Preprocessing
from ecos_core.config import DEFAULT_DOMAIN_SIZES, DataConfig, IndexConfig, check_group_sizes
from ecos_core.data.builtin import BUILTIN_DOMAINS, DISTRACTOR_DOMAINS
from ecos_core.training.distill import TEACHER_WIDTH, DistillConfig
from ecos_core.embedding.features import content_key
from ecos_core.sampling.hierarchy import ESTIMATOR
from ecos_core.sampling.samplers import SAMPLERS
from ecos_core.training.train import TrainConfig

APPLICATIONS: tuple[str, ...] = ("labeling", "labeling_fixmatch", "compression", "client_labeling")
BENCH_SAMPLERS: tuple[str, ...] = (*SAMPLERS, "local")
NOISY_SAMPLERS = ("ecos",)  # the only samplers whose result depends on σ
LOCAL_APPLICATIONS = ("labeling",)  # Local trains on the client's labelled data: no proxy set
MOBILENET_V2_MACS_224 = 0.30e9  # multiply-accumulates per image at 224×224
# per backbone, at 224×224 (conv + linear layers counted with forward hooks; a user's model: unknown)
BACKBONE_MACS_224 = {"mobilenet_v2": MOBILENET_V2_MACS_224, "efficientnet_lite0": 0.39e9}
ROW_FIELDS = ("client_domain", "regime", "budget", "sampler", "application", "seed", "sigma")
# Options added after cells were stored: they enter the grid key only when set, so adding
# an option keeps every finished cell.
_KEYED_WHEN_SET = ("pool_data", "distractor_domains", "backbone", "model_url", "model_sha256", "adapted_size",
                   "adapted_width", "label_groups", "label_sigma", "label_min_sigmas",
                   "annotator_feedback", "two_stage_share", "two_stage_group_size")  # fmt: skip
# Options whose first value is not their default: they stay out of the key at that value,
# so the cells stored before the option existed are still found.
_LEGACY = {"feature_space": "backbone", "client_labeler": "knn", "class_balance": False}
# The cluster hierarchy came after cells were stored without it: its options enter the grid
# key only while it is on (group_sizes not empty), so a grid that turns it off keeps its old
# cells and a grid that turns it on never reuses cells computed without it.
_HIERARCHY_OPTIONS = ("group_sizes", "group_sigmas")


def _csv(values: Any) -> Any:
    """Accept "a,b" as well as lists (CLI and JSON both work)."""
    if isinstance(values, str):
        return [v.strip() for v in values.split(",") if v.strip()]
    return values


class GridSpec(BaseModel):
    """The benchmark grid: axes (tuples) and the fixed setting every cell shares."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # axes
    client_domains: tuple[str, ...] = ("mnistm",)
    regimes: tuple[Literal["id+ood", "ood"], ...] = ("id+ood",)
    budgets: tuple[int, ...] = (1000,)
    samplers: tuple[str, ...] = ("ecos", "oracle", "random", "kcenter", "local")
    applications: tuple[str, ...] = ("labeling",)
    seeds: tuple[int, ...] = (0, 1, 2)
    sigmas: tuple[float, ...] = (6.1,)
    # setting
    domain_sizes: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_DOMAIN_SIZES))
    n_client_train: int = Field(1000, ge=1)
    n_client_test: int = Field(1000, ge=1)
    k: int = Field(100, ge=2)
    niter: int = Field(25, ge=1)
    nredo: int = Field(3, ge=1)
    coverage: Literal["ball", "nearest"] = "ball"  # see ecos_core.config.IndexConfig
    preprocessing: Preprocessing = Preprocessing()
    # the feature space (see ecos_core.config.IndexConfig): mobilenet_v2 (default), efficientnet_lite0,
    # or onnx with model_url + model_sha256
    backbone: str = "mobilenet_v2"
    model_url: str | None = None
    model_sha256: str | None = None
    embed_batch_size: int = Field(128, ge=1)
    delta: float = Field(1e-5, gt=0, lt=1)
    # 2σ, not the rounds' 3σ: with the hierarchy, 100-sample clients at σ=3.9 lost whole digit
    # classes at 3σ (clusters of 7-14 samples); measured in docs/benchmarks.md (small clients)
    threshold_sigmas: float = Field(2.0, ge=0)
    threshold_share: float = Field(0.005, ge=0, lt=1)
    exhausted: Literal["fill", "stop"] = "stop"
    floor_sigmas: float = Field(1.0, ge=0)
    group_sizes: tuple[float, ...] = (10.0, 20.0, 30.0)  # see ecos_core.config.SamplingConfig
    group_sigmas: float = Field(2.0, ge=0)
    train: TrainConfig = TrainConfig()
    teacher_size: int = Field(3000, ge=10)
    temperature: float = Field(4.0, gt=0)
    student_width: int = Field(16, ge=4)
    knn_k: int = Field(10, ge=1)
    knn_sigma: float = Field(4.0, gt=0)
    # each kNN query sees a Poisson 10% subsample of the client: 1000 queries cost ε≈5.3 with
    # the coverage scores (σ=6.1) instead of ≈109 without subsampling (dp-accounting PLD)
    knn_sample_rate: float = Field(0.1, gt=0, le=1)
    # a user's pool instead of the built-in one: an image folder or a manifest (uri, label,
    # domain) at any fsspec URL, or an ingested pool; its `domain` values are the domains
    # (domain_sizes caps them only when given explicitly)
    pool_data: str | None = None
    distractor_domains: tuple[str, ...] = DISTRACTOR_DOMAINS  # off-task domains, for the distractor share
    # "combined": the backbone's features beside a pool-adapted space (ecos_core.embedding.adapted_space),
    # trained on `adapted_size` annotated pool images ("none" for the distractor domains)
    feature_space: Literal["backbone", "combined"] = "combined"
    adapted_size: int = Field(3000, ge=10)
    adapted_width: int = Field(16, ge=4)
    # automated client labeling: "clusters" = one noisy label histogram over label_groups groups
    # of the selection (ecos_core.labeling.cluster_labels); "knn" = Private-kNN per selected sample
    client_labeler: Literal["knn", "clusters"] = "clusters"
    label_groups: int = Field(35, ge=1)
    label_sigma: float = Field(2.0, gt=0)
    label_min_sigmas: float = Field(3.0, ge=0)
    # selective manual labeling: annotators answer "none" for off-task images (not trained on) and
    # ECOS spends the budget in two halves, the second away from clusters that were mostly "none"
    annotator_feedback: bool = False
    # two-stage probing (ecos_core.sampling.two_stage): this share of the one-stage 1/σ² buys a coarse probe
    # over Ward groups of about two_stage_group_size clusters, the rest a fine probe inside the kept
    # groups; ε is both releases composed (equal to one release at σ). None: one stage
    two_stage_share: float | None = Field(None, gt=0, lt=1)
    two_stage_group_size: float = Field(20.0, gt=0)
    # spend ECOS's (and the Oracle's) cluster shares class by class, by the cloud's kNN class guess of each
    # pool image in the adapted space (ecos_core.sampling.class_share; "none" never picked): for OoD, where
    # the covered clusters miss classes. As rounds: only in the combined space (the backbone's has no guesses)
    class_balance: bool = True

    @field_validator("client_domains", "samplers", "applications", "regimes", "budgets", "seeds", "sigmas",
                     "distractor_domains", mode="before")  # fmt: skip
    @classmethod
    def _split_csv(cls, value: Any) -> Any:
        return _csv(value)

    @field_validator("client_domains", "samplers", "applications", "regimes", "budgets", "seeds", "sigmas")
    @classmethod
    def _non_empty_unique(cls, value: tuple, info: Any) -> tuple:
        if not value:
            raise ValueError(f"{info.field_name} must name at least one value")
        return tuple(dict.fromkeys(value))  # drop repeats, keep order


    @field_validator("group_sizes")
    @classmethod
    def _group_sizes(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        return check_group_sizes(value)

    @field_validator("samplers")
    @classmethod
    def _known_samplers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [s for s in value if s not in BENCH_SAMPLERS]
        if unknown:
            raise ValueError(f"unknown sampler(s) {unknown}; known: {list(BENCH_SAMPLERS)}")
        return value

    @field_validator("applications")
    @classmethod
    def _known_applications(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [a for a in value if a not in APPLICATIONS]
        if unknown:
            raise ValueError(f"unknown application(s) {unknown}; known: {list(APPLICATIONS)}")
        return value

    @field_validator("budgets")
    @classmethod
    def _positive_budgets(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(b < 1 for b in value):
            raise ValueError(f"budgets must be >= 1, got {list(value)}")
        return value

    @field_validator("sigmas")
    @classmethod
    def _positive_sigmas(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not s > 0 for s in value):
            raise ValueError(f"sigmas must be > 0 (σ=0 is the oracle sampler), got {list(value)}")
        return value

    @model_validator(mode="after")
    def _data_configs(self) -> GridSpec:
        try:
            IndexConfig(backbone=self.backbone, model_url=self.model_url, model_sha256=self.model_sha256)
        except ValidationError as err:
            raise ValueError("; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())) from None
        if self.two_stage_share is not None and self.annotator_feedback:
            raise ValueError("two_stage_share and annotator_feedback cannot be combined (yet)")
        if self.knn_k > self.n_client_train:
            raise ValueError(f"knn_k {self.knn_k} is larger than n_client_train {self.n_client_train}")
        if self.pool_data is not None:  # a user's pool: its domains are known once loaded (BenchContext.check)
            return self
        unknown = [d for d in self.client_domains if d not in BUILTIN_DOMAINS]
        if unknown:
            raise ValueError(f"unknown client domain(s) {unknown}; built-in: {list(BUILTIN_DOMAINS)}")
        # DataConfig checks domain names, sizes and that the client's train+test fit.
        for domain in self.client_domains:
            for regime in self.regimes:
                try:
                    self.data_config(domain, regime)
                except ValidationError as err:
                    msgs = "; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())
                    raise ValueError(f"client domain {domain!r}, regime {regime!r}: {msgs}") from None
        return self

    def data_config(self, client_domain: str, regime: str) -> DataConfig:
        return DataConfig(domain_sizes=self.domain_sizes, client_domain=client_domain, regime=regime,  # type: ignore[arg-type]
                          n_client_train=self.n_client_train, n_client_test=self.n_client_test)  # fmt: skip

    def setting(self) -> dict:
        """Everything but the axes: what makes two cells with equal fields comparable."""
        axes = {"client_domains", "regimes", "budgets", "samplers", "applications", "seeds", "sigmas"}
        unset = {n for n in _KEYED_WHEN_SET if getattr(self, n) == type(self).model_fields[n].default}
        unset |= {n for n, legacy in _LEGACY.items() if getattr(self, n) == legacy}
        if not self.group_sizes:
            unset |= set(_HIERARCHY_OPTIONS)
        if self.feature_space == "backbone":  # no class guesses there: the option changes nothing
            unset.add("class_balance")
        setting = self.model_dump(mode="json", exclude=axes | unset)
        return setting if not self.group_sizes else {**setting, "group_estimator": ESTIMATOR}

    @property
    def teacher_train(self) -> TrainConfig:
        return self.train.model_copy(update={"width": TEACHER_WIDTH})

    @property
    def distill_config(self) -> DistillConfig:
        return DistillConfig(temperature=self.temperature, student_width=self.student_width, train=self.train)


def grid_key(spec: GridSpec, data_key: str | None = None) -> str:
    """Key of the grid's setting (not its axes): growing an axis keeps finished cells.
    `data_key` fingerprints a user's pool, so edited data never reuses old cells."""
    parts = (spec.setting(),) if data_key is None else (spec.setting(), data_key)
    return content_key("ecos-bench-grid-v1", *parts)[:16]


class Cell(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    client_domain: str
    regime: str
    budget: int
    sampler: str
    application: str
    seed: int
    sigma: float | None = None  # only samplers in NOISY_SAMPLERS have one


def cell_key(cell: Cell, spec: GridSpec) -> str:
    """Stable content hash of a cell under the grid's setting."""
    return content_key("ecos-bench-cell-v1", spec.setting(), cell.model_dump(mode="json"))[:24]


def grid_cells(spec: GridSpec) -> list[Cell]:
    """Every cell of the grid, seed-major (cells sharing features run together).

    σ only multiplies the noisy samplers; Local exists only for the applications in
    LOCAL_APPLICATIONS."""
    cells = []
    for seed in spec.seeds:
        for domain in spec.client_domains:
            for regime in spec.regimes:
                for application in spec.applications:
                    for budget in spec.budgets:
                        for sampler in spec.samplers:
                            if sampler == "local" and application not in LOCAL_APPLICATIONS:
                                continue
                            sigmas = spec.sigmas if sampler in NOISY_SAMPLERS else (None,)
                            for sigma in sigmas:
                                cells.append(Cell(client_domain=domain, regime=regime, budget=budget, sampler=sampler,
                                                  application=application, seed=seed, sigma=sigma))  # fmt: skip
    return cells
