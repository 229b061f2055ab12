"""`--backbone`, the user model's flags, `--feature-space` (and `--class-balance`, which needs
its combined space), shared by `ecos run` and
`ecos index`: the feature space (see ecos_core.config.IndexConfig), validated with the rest
of the config."""

from __future__ import annotations

from typing import Optional

import typer

BACKBONE_FLAGS = {"index.backbone": "--backbone", "index.model_url": "--model-url", "index.model_sha256": "--model-sha256",
                  "index.feature_dim": "--feature-dim", "index.feature_space": "--feature-space"}  # fmt: skip
BackboneOpt = typer.Option(None, "--backbone", help="The feature space: mobilenet_v2 (default), efficientnet_lite0, or "
                                                    "onnx (your model: --model-url, --model-sha256).")  # fmt: skip
ModelUrlOpt = typer.Option(None, "--model-url", help="With --backbone onnx: your ONNX file (path, file://, "
                                                     "s3://, http(s)://), mapping images to (N, d) features.")  # fmt: skip
ModelShaOpt = typer.Option(None, "--model-sha256", help="With --backbone onnx: the file's sha256 (it is refused "
                                                        "if it differs).")  # fmt: skip
FeatureDimOpt = typer.Option(None, "--feature-dim", help="With --backbone onnx: its feature dimension "
                                                         "(default: measured).")  # fmt: skip
FeatureSpaceOpt = typer.Option(None, "--feature-space", help="combined (default): the backbone's features beside a small "
                                                             "CNN trained on annotated pool images, shipped in the probe; "
                                                             "backbone: its features alone.")  # fmt: skip

ClassBalanceOpt = typer.Option(None, "--class-balance/--no-class-balance", help="Spend the budget class by class, by the "
                               "cloud's guess of each pool image's class (default on; the combined feature space only): "
                               "for a client whose domain the pool lacks.")  # fmt: skip


def backbone_overrides(backbone: Optional[str], model_url: Optional[str], model_sha256: Optional[str],
                        feature_dim: Optional[int], feature_space: Optional[str] = None) -> dict:  # fmt: skip
    return {"index.backbone": backbone, "index.model_url": model_url, "index.model_sha256": model_sha256,
            "index.feature_dim": feature_dim, "index.feature_space": feature_space}  # fmt: skip


def name_user_model_flags(given: dict[str, str]) -> None:
    """With --backbone given, what `onnx` lacks is named by its flag, not by its config key."""
    if "index.backbone" in given:
        given.update({key: flag for key, flag in BACKBONE_FLAGS.items() if key not in given})
