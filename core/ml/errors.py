"""The exceptions of the ML library, torch-free so the worker can map them without torch."""

from __future__ import annotations


class InvalidDatasetError(ValueError):
    """A dataset (uploaded or generated) is unusable; the message says what to change."""


class SpecError(ValueError):
    """A job spec is inconsistent with the data or the model; the message says what to change."""


class DeviceUnavailableError(RuntimeError):
    """The requested device (e.g. "cuda") is not available on this worker."""


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or inf; `epoch` says when."""

    def __init__(self, epoch: int) -> None:
        super().__init__(
            f"training diverged in epoch {epoch}: the loss became NaN or inf; lower "
            f"optimizer.lr or add weight decay"
        )
        self.epoch = epoch


class TrialDivergedError(TrainingDivergedError):
    """One trial's loss became NaN or inf; `trial` is its index in the specs, `epoch` when."""

    def __init__(self, trial: int, epoch: int) -> None:
        super().__init__(epoch)
        self.args = (f"trial {trial}: {self.args[0]}",)
        self.trial = trial


class TrainingStopped(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Training was stopped from outside (hooks.should_stop); `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"training stopped: {reason}")
        self.reason = reason
