"""One GPU per pool child: with `--concurrency N` on a machine with G > 1 GPUs, pool child i
trains on GPU i mod G (of those CUDA_VISIBLE_DEVICES lists, if it is set).

The child's CUDA_VISIBLE_DEVICES is narrowed to its one device when the child starts, before
anything in it touches CUDA, so "cuda" and "auto" mean that device for the child's whole life.
The GPUs are counted without starting CUDA (NVML): a CUDA runtime started before the variable
is set would ignore it. With one GPU, none, or no NVML, nothing is changed.
"""

from __future__ import annotations

import ctypes
import logging
import os
from typing import Any

from celery.signals import worker_process_init

logger = logging.getLogger("softlabel.worker")


def device_for_child(index: int, visible: str | None, gpu_count: int) -> str | None:
    """The CUDA_VISIBLE_DEVICES value for pool child `index`, or None to leave it as it is."""
    if visible is not None:
        devices = [d.strip() for d in visible.split(",") if d.strip()]
    else:
        devices = [str(i) for i in range(max(gpu_count, 0))]
    if len(devices) <= 1:
        return None
    return devices[index % len(devices)]


def _gpu_count_without_cuda() -> int:
    """GPUs NVML sees (-1: unknown), without importing torch or starting the CUDA runtime."""
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
        count = ctypes.c_uint(0)
        if nvml.nvmlInit_v2() != 0 or nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
            return -1
        return int(count.value)
    except (OSError, AttributeError):  # no NVIDIA driver here: leave the child alone
        return -1


@worker_process_init.connect
def _pin_child_to_one_gpu(**_: Any) -> None:
    """In each new pool child: keep only its own GPU visible."""
    from billiard.process import current_process

    index = getattr(current_process(), "index", None)
    if index is None:
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    device = device_for_child(int(index), visible,
                              0 if visible is not None else _gpu_count_without_cuda())
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device
        logger.info("pool child %s trains on GPU %s", index, device)
