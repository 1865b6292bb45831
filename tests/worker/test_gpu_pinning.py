"""worker.gpu: which GPU each pool child keeps (the mapping; CI has no GPU to pin)."""

from __future__ import annotations

import pytest

from worker.gpu import _gpu_count_without_cuda, device_for_child


@pytest.mark.parametrize(("index", "visible", "count", "expected"), [
    (0, None, 4, "0"), (1, None, 4, "1"), (5, None, 4, "1"),  # round robin over the GPUs
    (0, "2,3", 8, "2"), (1, "2,3", 8, "3"), (2, " 2, 3 ", 8, "2"),  # within what is visible
    (3, None, 1, None), (0, "1", 4, None),  # one GPU: nothing to choose
    (0, None, 0, None), (0, None, -1, None), (0, "", 4, None),  # none, unknown, hidden
])
def test_each_child_keeps_one_device_round_robin(index, visible, count, expected):
    assert device_for_child(index, visible, count) == expected


def test_counting_gpus_never_fails():
    count = _gpu_count_without_cuda()
    assert isinstance(count, int) and count >= -1
