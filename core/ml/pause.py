"""A test-only pause in the training loop, so tests drive time limits by events, not by speed.

`SOFTLABEL_TEST_PAUSE_AFTER_EPOCH=N` (set only by tests) holds training (a job's `fit`, or
a stacked group's `_train_stack` after its group checkpoint is handed over) after every epoch
from N on until the trainer is asked to stop (cancel, shutdown, lease loss, hard time limit)
or a signal (the soft time limit) interrupts the sleep. With
`SOFTLABEL_TEST_PAUSE_RELEASE=<path>` as well, the pause also ends once that file exists, so
a test can hold a job mid-training (to kill a worker, restart a server) and then let it
finish, however fast this machine trains. Unset, it costs one environment lookup per epoch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

PAUSE_ENV = "SOFTLABEL_TEST_PAUSE_AFTER_EPOCH"
RELEASE_ENV = "SOFTLABEL_TEST_PAUSE_RELEASE"
_POLL_S = 0.05


def pause_if_requested(epoch: int, should_stop: Callable[[], str | None] | None) -> None:
    """Hold after epoch `epoch` when the test pause asks for it; return once a stop is asked
    (or the release file exists)."""
    raw = os.environ.get(PAUSE_ENV)
    if not raw or not raw.isdigit() or epoch < int(raw):
        return
    release = os.environ.get(RELEASE_ENV)
    while should_stop is None or not should_stop():
        if release and os.path.exists(release):
            return
        time.sleep(_POLL_S)
