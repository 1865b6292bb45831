"""The catalog: what a client may put in a job spec, built from the spec and dataset metadata.

Torch-free (the API serves it): everything comes from `core.spec` constants and
`core.ml.upload` metadata, so the catalog cannot drift from what the API validates.
"""

from __future__ import annotations

from typing import Any

from core.config import Settings
from core.ml.arch_compat import compatible_archs
from core.ml.builtin_datasets import BUILTIN_DATASETS, BuiltinInfo
from core.ml.cost import estimate_cost
from core.ml.upload import ACCEPTED_LAYOUTS
from core.models import FAILURE_REASONS
from core.spec import (
    ARCHS,
    DEFAULT_POSTHOC,
    DEVICES,
    EARLY_STOPPING_METRICS,
    FORMS,
    LOSS_METHODS,
    METHOD_PARAMS,
    OPTIMIZERS,
    POSTHOC_METHODS,
    VARIANTS,
    ModelSpec,
    OptimizerSpec,
)

ARCH_INFO: dict[str, dict[str, Any]] = {
    "linear": {
        "view": "flat",
        "needs": "any dataset (flat features)",
        "hidden": "ignored",
        "description": "multinomial logistic regression; penultimate = the input features",
    },
    "mlp": {
        "view": "flat",
        "needs": "any dataset (flat features)",
        "hidden": "width of each Linear + ReLU + Dropout layer",
        "description": "multi-layer perceptron; no hidden layers = logistic regression",
    },
    "cnn": {
        "view": "image",
        "needs": "an image shape: digits, or an NPZ upload of images (N, H, W), (N, H, W, C) "
                 "or (N, C, H, W)",
        "hidden": "channels of each 3x3 conv-BN-ReLU block (default [32, 64, 128]); each block "
                  "is followed by 2x2 max pooling while the map is >= 8 pixels, then global "
                  "average pooling",
        "description": "convolutional net that downsamples (locality, translation invariance)",
    },
    "resnet": {
        "view": "image",
        "needs": "images of at least 8x8 pixels",
        "hidden": "ignored; model.depth in {20, 32, 44, 56, 110} (default 20)",
        "description": "CIFAR ResNet-(6n+2) of He et al. 2016: 16/32/64 channels, option-A "
                       "shortcuts (0.27M parameters at depth 20)",
    },
    "gru": {
        "view": "sequence",
        "needs": "an image shape (H, W): the H rows are the time steps",
        "hidden": "hidden[0] = GRU hidden size, len(hidden) = number of layers",
        "description": "recurrent net over image rows (sequence bias)",
    },
    "transformer": {
        "view": "sequence",
        "needs": "an image shape (H, W): the H rows are the tokens",
        "hidden": "hidden[0] = model width (divisible by 4 heads), len(hidden) = encoder layers",
        "description": "pre-norm transformer encoder with a class token (weak inductive bias)",
    },
}

VARIANT_INFO: dict[str, dict[str, str]] = {
    "uniform": {
        "target": "(1-alpha)*onehot(y) + alpha/K",
        "needs": "nothing; equals torch cross_entropy(label_smoothing=alpha)",
    },
    "off_target": {
        "target": "1-alpha on the target, alpha/(K-1) on every other class",
        "needs": "nothing",
    },
    "prior": {
        "target": "(1-alpha)*onehot(y) + alpha*prior",
        "needs": "loss.prior: one probability per class, summing to 1",
    },
    "binary": {
        "target": "sigmoid of one logit against y*(1-alpha) + alpha/2",
        "needs": "exactly 2 classes",
    },
}

OPTIMIZER_INFO: dict[str, str] = {
    "sgd": "SGD with momentum (optimizer.momentum) and weight decay",
    "adam": "Adam with L2 weight decay",
    "adamw": "AdamW with decoupled weight decay",
}

DEVICE_INFO: dict[str, str] = {
    "auto": "CUDA with bf16 autocast when the worker has a GPU, else CPU",
    "cpu": "always the CPU",
    "cuda": "a CUDA GPU; the job fails with device_unavailable on a worker without one",
}

TEST_METRICS: dict[str, str] = {
    "accuracy": "fraction of correct top-1 predictions",
    "nll": "mean negative log-likelihood of the true class",
    "brier": "mean over samples of sum_k (p_k - [y = k])^2 (not halved)",
    "ece": "expected calibration error, equal-width bins (Guo et al. 2017)",
    "ece_adaptive": "ECE with equal-mass bins",
    "mce": "maximum calibration error over non-empty bins",
    "classwise_ece": "mean over classes of the ECE of p_k against [y = k]",
    "mean_confidence": "mean top-label confidence",
    "overconfidence": "mean confidence minus accuracy",
    "mean_entropy": "mean entropy of the predicted distribution",
    "reliability": "per bin: lo, hi, count, confidence, accuracy",
    "logit_gap": "z_y - mean of the other logits: mean, median and its optimum under smoothing",
    "smooth_ece": "smooth ECE (Blasiok & Nakkiran 2024; relplot.smECE) on top-label pairs",
    "ece_debiased_l2": "debiased top-label L2 calibration error, 15 equal-mass bins (Kumar 2019)",
    "ece_sweep": "ECE with the most equal-mass bins keeping accuracies monotone (Roelofs 2022)",
    "ece_sweep_bins": "the bin count ece_sweep chose",
    "ci95": "bootstrap 95 % intervals over examples of ece and smooth_ece (1000 resamples)",
}

SCALAR_TEST_METRICS = tuple(
    k for k in TEST_METRICS if k not in ("reliability", "logit_gap", "ci95", "ece_sweep_bins"))

LOSS_METHOD_INFO: dict[str, dict[str, str]] = {
    "label_smoothing": {"loss": "cross-entropy against the smoothed target (loss.alpha, "
                                "loss.variant, loss.form)", "reference": "Szegedy et al. 2016"},
    "margin": {"loss": "CE + margin_weight * mean_{i,k} ReLU(max_j z_ij - z_ik - margin)",
               "reference": "MbLS, Liu et al. CVPR 2022"},
    "focal": {"loss": "-(1 - p_t)^gamma log p_t", "reference": "Lin et al. 2017"},
    "focal_adaptive": {"loss": "focal with gamma 5 for p_t < 0.2, 3 for p_t < 0.5, else gamma",
                       "reference": "FLSD-53, Mukhoti et al. 2020"},
    "confidence_penalty": {"loss": "CE - beta * H(p)", "reference": "Pereyra et al. 2017"},
}
POSTHOC_INFO: dict[str, str] = {
    "temperature": "one temperature T minimising validation NLL",
    "vector_scaling": "per-class scale and bias of the logits (L2 towards identity)",
    "matrix_scaling": "a full affine map of the logits (L2 towards identity)",
    "histogram_binning": "one-vs-rest, 15 equal-width bins, renormalised",
    "isotonic": "one-vs-rest isotonic regression, renormalised",
    "platt": "binary tasks: logistic regression on z_1 - z_0",
}

HISTORY_METRICS: dict[str, str] = {
    "train_loss": "mean label-smoothed training loss of the epoch",
    "val_nll": "validation negative log-likelihood",
    "val_accuracy": "validation accuracy",
    "val_ece": "validation ECE",
}


def _default_cost(arch: str, n: int, f: int, k: int, image_shape: tuple[int, ...] | None
                  ) -> dict[str, Any]:
    """The cost estimate of the default model of `arch` with the default split and batch."""
    model = ModelSpec(arch=arch).model_dump()  # type: ignore[arg-type]
    return estimate_cost(model, n_features=f, n_classes=k, image_shape=image_shape,
                         n_train=round(n * 0.7), n_val=round(n * 0.15),
                         batch_size=128).as_dict()


def _builtin_entry(name: str, info: BuiltinInfo) -> dict[str, Any]:
    """One built-in dataset of the catalog, with each compatible arch's default cost."""
    archs = compatible_archs(info.n_features, info.image_shape)
    return {
        "name": name,
        "source": "builtin",
        "n_samples": info.n_samples,
        "n_features": info.n_features,
        "n_classes": info.n_classes,
        "image_shape": list(info.image_shape) if info.image_shape else None,
        "description": info.description,
        "compatible_archs": archs,
        "default_cost": {
            arch: _default_cost(arch, info.n_samples, info.n_features, info.n_classes,
                                info.image_shape)
            for arch in archs
        },
    }


def _cost_limits(settings: Settings) -> dict[str, Any]:
    """The cost caps a job (and a stacked sweep group) must stay under."""
    return {
        "max_model_params": settings.max_model_params,
        "max_epoch_gflop": settings.max_epoch_gflop,
        "max_activation_bytes": settings.max_activation_bytes,
        "notes": "estimated from the spec and the dataset's shape before a job is queued "
                 "(the job document's `cost`); a stacked sweep group counts all its trials",
    }


def build_catalog(*, settings: Settings) -> dict[str, Any]:
    """Datasets, architectures, loss variants, optimisers, metrics and limits, JSON-ready."""
    model_defaults = ModelSpec().model_dump()
    optimizer_defaults = OptimizerSpec().model_dump()
    return {
        "datasets": [_builtin_entry(name, info) for name, info in BUILTIN_DATASETS.items()],
        "cost_limits": _cost_limits(settings),
        "dataset_sources": {
            "builtin": "a scikit-learn bundled dataset by name (no network)",
            "synthetic": "seeded Gaussian clusters: classes, features, samples, separation, seed",
            "upload": "an uploaded dataset by id (POST /v1/datasets)",
        },
        "upload": {
            "formats": ["csv", "parquet", "npz"],
            "max_bytes": settings.max_upload_bytes,
            "max_rows": settings.max_dataset_rows,
            "max_columns": settings.max_dataset_columns,
            "max_classes": settings.max_dataset_classes,
            "max_decoded_bytes": settings.max_dataset_bytes,
            "notes": (
                "CSV needs a header row; every column but label_column (default 'label') must "
                f"be numeric. NPZ holds arrays X and y, X being {ACCEPTED_LAYOUTS}; pickled "
                "arrays are refused. Each class needs at least 3 rows."
            ),
        },
        "architectures": [{"name": arch, **ARCH_INFO[arch]} for arch in ARCHS],
        "model_defaults": model_defaults,
        "loss_variants": [{"name": v, **VARIANT_INFO[v]} for v in VARIANTS],
        "loss_forms": list(FORMS),
        "loss_methods": [
            {"name": m, "parameters": dict(METHOD_PARAMS[m]), **LOSS_METHOD_INFO[m]}
            for m in LOSS_METHODS
        ],
        "posthoc_methods": [{"name": m, "description": POSTHOC_INFO[m],
                             "default": m in DEFAULT_POSTHOC} for m in POSTHOC_METHODS],
        "optimizers": [{"name": o, "description": OPTIMIZER_INFO[o]} for o in OPTIMIZERS],
        "optimizer_defaults": optimizer_defaults,
        "devices": [{"name": d, "description": DEVICE_INFO[d]} for d in DEVICES],
        "early_stopping_metrics": list(EARLY_STOPPING_METRICS),
        "metrics": {
            "test": [{"name": k, "description": v} for k, v in TEST_METRICS.items()],
            "history": [{"name": k, "description": v} for k, v in HISTORY_METRICS.items()],
        },
        "failure_reasons": list(FAILURE_REASONS),
    }
