"""predictions.npz: a job's raw validation and test predictions, for anyone's own metrics.

Arrays (plain NumPy, no object arrays, so `np.load(..., allow_pickle=False)` reads it):
val_logits, val_labels, val_index, test_logits, test_labels, test_index; the indices are
rows of the dataset as loaded (an upload's row order, a builtin's scikit-learn order).
"""

from __future__ import annotations

import io

import numpy as np
from torch import Tensor

from core.ml.data import PreparedData

__all__ = ["PREDICTION_ARRAYS", "predictions_npz"]

PREDICTION_ARRAYS = ("val_logits", "val_labels", "val_index", "test_logits", "test_labels",
                     "test_index")


def predictions_npz(data: PreparedData, val_logits: Tensor, val_labels: Tensor,
                    test_logits: Tensor, test_labels: Tensor) -> bytes:
    """The compressed NPZ bytes of the validation and test logits, labels and row indices."""
    def index(rows: np.ndarray | None, n: int) -> np.ndarray:
        return np.asarray(rows if rows is not None else np.full(n, -1), dtype=np.int64)

    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        val_logits=val_logits.detach().float().cpu().numpy(),
        val_labels=val_labels.detach().long().cpu().numpy(),
        val_index=index(data.val_index, len(val_labels)),
        test_logits=test_logits.detach().float().cpu().numpy(),
        test_labels=test_labels.detach().long().cpu().numpy(),
        test_index=index(data.test_index, len(test_labels)),
    )
    return buf.getvalue()
