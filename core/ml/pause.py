"""A test-only pause in the training loop, so tests drive time limits by events, not by speed.

`SOFTLABEL_TEST_PAUSE_AFTER_EPOCH=N` (set only by tests) holds training (a job's `fit` or a
stacked group's `_train_stack`, after its group checkpoint is handed over) after epoch N until
the trainer is asked to stop (cancel, shutdown, lease loss, hard time limit) or a signal
(the soft time limit) interrupts the sleep. Unset, it costs one environment lookup per epoch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

PAUSE_ENV = "SOFTLABEL_TEST_PAUSE_AFTER_EPOCH"
_POLL_S = 0.05


def pause_if_requested(epoch: int, should_stop: Callable[[], str | None] | None) -> None:
    """Hold after epoch `epoch` when the test pause asks for it; return once a stop is asked."""
    raw = os.environ.get(PAUSE_ENV)
    if not raw or not raw.isdigit() or epoch < int(raw):
        return
    while should_stop is None or not should_stop():
        time.sleep(_POLL_S)
