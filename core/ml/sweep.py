"""Trials trained together: specs differing only in loss.alpha and training.seed, one stacked model.

`run_trials(specs)` builds every trial's model exactly as its standalone job would (the global
RNG seeded with the trial's training.seed before `build_model`), stacks the parameters
(`torch.func.stack_module_state`) and trains them with one `vmap`ped `functional_call` per
batch (a plain Linear-ReLU net as the same batched matmuls, called directly:
`stacked_parts.linear_stack`): one forward and one backward over the batch for all trials.

Equality with standalone jobs (`run_experiment(specs[i])`), per trial:
- the same initial weights, the same data order (a `torch.Generator` per training seed, consumed
  like `fit` does; trials with different seeds gather their own batches), the same augmentation
  stream (seed + 1), the same loss (`losses.label_smoothed_cross_entropy` on the stacked logits
  with one alpha per trial; the sum of the per-trial means leaves every trial's gradient its
  own), the same optimiser (Adam/AdamW/SGD are element-wise, so one optimiser over stacked
  tensors is per-trial identical), the same validation metrics, early-stopping rule and
  best-epoch weights, and the same post-training code (`finish.finish_trials`, which finishes
  all trials at once and gives each the numbers a job of its own gets).
- A trial that stops early (or is canceled) is masked out by compaction: its rows are dropped
  from the stacked parameters and the optimiser state at the epoch boundary.
- Batched matmuls are not bit-identical to unbatched ones (BLAS blocking): results agree within
  float tolerance (tests/core/ml/test_sweep.py measures it).

Not stacked, run one after another through `run_experiment` instead: dropout > 0 (vmap'ed
dropout cannot reproduce the standalone random stream), what `core.sweep_spec.may_stack`
refuses, and models with buffers. (The API enqueues trials `may_stack` refuses on their own, as
plain jobs; this fallback serves a group that reaches a worker anyway.)

Group checkpoints (core/ml/group_checkpoint.py): after every epoch but the last the state goes
to `hooks.checkpoint`; `hooks.resume` goes on from one at epoch k+1, bit for bit like a run
never interrupted (fewer trials than it holds: float tolerance; a trial it lacks: epoch 1).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from core.ml import group_checkpoint
from core.ml.augment import augment_defaults, random_crop_flip
from core.ml.early_stopping import EarlyStopping, epoch_rows
from core.ml.errors import SpecError, TrainingDivergedError, TrainingStopped, TrialDivergedError
from core.ml.experiment import (
    ExperimentOutput,
    PreparedExperiment,
    prepare_experiment,
    run_experiment,
)
from core.ml.finish import finish_trials
from core.ml.pause import pause_if_requested
from core.ml.placement import batch_view
from core.ml.stacked_loss import StackedLoss
from core.ml.stacked_parts import compact_rows, linear_stack, plain_layers
from core.ml.train import (
    FitResult,
    TrainConfig,
    TrainHooks,
    _autocast,
    class_logits,
    make_optimizer,
    resolve_device,
)
from core.sweep_spec import may_stack, stack_key

__all__ = ["TrialHooks", "can_stack", "run_trials", "stack_key"]

_PREFIX = "net."


@dataclass
class TrialHooks:
    """Callbacks between a group of stacked trials and its caller (the worker)."""

    on_epoch: Callable[[int, dict], None] | None = None
    should_stop: Callable[[], str | None] | None = None
    trial_canceled: Callable[[int], bool] | None = None
    checkpoint: Callable[[Callable[[], bytes]], None] | None = None  # gets an encoder
    resume: bytes | None = None  # a group checkpoint to go on from (unusable: epoch 1)
    trial_keys: list[str] | None = None  # trials' ids in checkpoints (job ids)


def can_stack(prep: PreparedExperiment) -> bool:
    """Whether trials of this prepared spec train stacked (else one after another)."""
    return may_stack(prep.spec) and not any(True for _ in prep.build().buffers())


def run_trials(
    specs: list[dict],
    *,
    arrays: tuple[np.ndarray, np.ndarray] | None = None,
    hooks: TrialHooks | None = None,
    class_names: list[str] | None = None,
    uploaded_layout: str | None = None,
) -> list[ExperimentOutput | None]:
    """Train trials with equal stack_key together; output i is like run_experiment(specs[i])'s."""
    if not specs:
        return []
    if len({stack_key(s) for s in specs}) > 1:
        raise ValueError("run_trials needs specs that differ only in loss.alpha, training.seed, "
                         "tags and webhook_url (equal stack_key)")
    hooks = hooks or TrialHooks()
    first = prepare_experiment(specs[0], arrays=arrays, class_names=class_names,
                               uploaded_layout=uploaded_layout)
    preps = [first.with_spec(s) for s in specs]
    if not can_stack(first):
        return _run_sequential(specs, arrays, hooks, class_names, uploaded_layout)
    return _run_stacked(preps, hooks)


# --------------------------------------------------------------------------- fallback


def _trial_train_hooks(i: int, hooks: TrialHooks) -> tuple[TrainHooks, list[bool]]:
    """TrainHooks for trial i run alone; the list's flag turns True once the trial is canceled."""
    canceled = [False]

    def on_epoch(row: dict) -> None:
        if hooks.on_epoch:
            hooks.on_epoch(i, row)
        canceled[0] = bool(hooks.trial_canceled and hooks.trial_canceled(i))

    def should_stop() -> str | None:
        if canceled[0]:
            return "trial canceled"
        return hooks.should_stop() if hooks.should_stop else None

    return TrainHooks(on_epoch=on_epoch, should_stop=should_stop), canceled


def _run_sequential(specs: list[dict], arrays: tuple[np.ndarray, np.ndarray] | None,
                    hooks: TrialHooks, class_names: list[str] | None,
                    uploaded_layout: str | None) -> list[ExperimentOutput | None]:
    """Run the trials one after another as standalone experiments (unstackable specs)."""
    outputs: list[ExperimentOutput | None] = []
    for i, spec in enumerate(specs):
        if hooks.trial_canceled and hooks.trial_canceled(i):
            outputs.append(None)
            continue
        train_hooks, canceled = _trial_train_hooks(i, hooks)
        try:
            outputs.append(run_experiment(spec, arrays=arrays, class_names=class_names,
                                          uploaded_layout=uploaded_layout, hooks=train_hooks))
        except TrainingStopped:
            if not canceled[0]:
                raise
            outputs.append(None)
        except TrainingDivergedError as err:
            raise TrialDivergedError(i, err.epoch) from err
    return outputs


# --------------------------------------------------------------------------- stacked training


class _Net(nn.Module):
    """Wraps a net so that a functional call returns its raw outputs (forward)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        """Raw outputs of the wrapped net."""
        return self.net(x)


@dataclass
class _Trial:
    """Per-trial bookkeeping of the epoch loop (the state `fit` carries)."""

    index: int
    cfg: TrainConfig
    seed_slot: int
    stop: EarlyStopping
    history: list[dict[str, Any]] = field(default_factory=list)
    best_state: dict[str, Tensor] | None = None
    final_state: dict[str, Tensor] | None = None
    canceled: bool = False
    epochs_run: int = 0


def _trial_state(params: dict[str, Tensor], row: int) -> dict[str, Tensor]:
    """A detached CPU copy of one trial's weights, as the standalone model's state dict."""
    return {k[len(_PREFIX):]: v[row].detach().cpu().clone() for k, v in params.items()}




class _Stack:
    """The active trials' stacked parameters, optimiser and loss; row r belongs to active[r]."""

    def __init__(self, preps: list[PreparedExperiment], device: torch.device,
                 keys: list[str] | None = None) -> None:
        p0, cfg = preps[0], preps[0].cfg
        self.cfg, self.device, self.image_shape = cfg, device, p0.image_shape
        self.models = []
        for p in preps:  # the same initial weights as run_experiment: seed, then build
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(p.cfg.seed)
                self.models.append(p.build())
        params, _ = stack_module_state([_Net(m) for m in self.models])  # type: ignore[arg-type]
        self.params = {k: v.detach().to(device).requires_grad_(True) for k, v in params.items()}
        self.base = _Net(copy.deepcopy(self.models[0])).to("meta")
        self.optimizer = make_optimizer(self.params.values(), cfg, fused=True)
        self.loss_fn = StackedLoss([p.cfg for p in preps])
        seeds = sorted({p.cfg.seed for p in preps})
        self.orders = [torch.Generator().manual_seed(s) for s in seeds]
        self.augs = [torch.Generator().manual_seed(s + 1) for s in seeds]
        self.trials = [_Trial(i, p.cfg, seeds.index(p.cfg.seed),
                              EarlyStopping(cfg.early_stopping_metric, cfg.patience))
                       for i, p in enumerate(preps)]
        self.active = list(self.trials)
        self.keys = list(keys or (str(i) for i in range(len(preps))))  # ids in checkpoints
        self.fingerprint = stack_key(p0.spec)
        self.resumed_from: int | None = None
        self.layers = plain_layers(self.models[0], self.params, _PREFIX)

    def call(self, p: dict[str, Tensor], x: Tensor) -> Tensor:
        """The base net's raw outputs under one trial's parameters (vmapped over trials)."""
        return functional_call(self.base, p, (x,))

    def forward(self, x: Tensor, stacked: bool) -> Tensor:
        """Every active trial's raw outputs (T, B, K) for one input (B, ...) or one per trial.

        A plain Linear-ReLU stack runs as batched matmuls directly (the ops vmap lowers it
        to, without its per-call dispatch); any other net through vmap(functional_call).
        """
        if self.layers is None or x.ndim != (3 if stacked else 2):
            return vmap(self.call, in_dims=(0, 0 if stacked else None))(self.params, x)
        return linear_stack(self.params, self.layers, x)

    def keep(self, rows: list[int]) -> None:
        """Keep only the active rows `rows` (the others' weights and state stop changing)."""
        if len(rows) == len(self.active):
            return
        self.active = [self.active[r] for r in rows]
        if self.active:
            self.params, self.optimizer = compact_rows(self.params, self.optimizer, rows, self.cfg)
            self.loss_fn.keep(rows)

    def batches(self, X: Tensor, y: Tensor) -> Iterator[tuple[Tensor, Tensor, bool]]:
        """Each batch of one epoch: inputs, labels, whether they are stacked per trial."""
        n, bs, cfg = len(X), self.cfg.batch_size, self.cfg
        slots = sorted({t.seed_slot for t in self.active})
        perms = {s: torch.randperm(n, generator=self.orders[s]).to(self.device) for s in slots}
        rows_slot = torch.tensor([slots.index(t.seed_slot) for t in self.active],
                                 device=self.device)
        shape = self.image_shape if cfg.augment else None
        pad, flip = augment_defaults(shape, cfg.crop_padding, cfg.flip) if shape else (0, False)
        for start in range(0, n, bs):
            xs, ys = [], []
            for s in slots:
                idx = perms[s][start:start + bs]
                xb = X[idx]
                if shape is not None:
                    xb = random_crop_flip(xb, shape, batch_view(xb), self.augs[s], padding=pad,
                                          flip=flip)
                xs.append(xb)
                ys.append(y[idx])
            if len(slots) == 1:
                yield xs[0], ys[0], False
            else:
                yield torch.stack(xs)[rows_slot], torch.stack(ys)[rows_slot], True

    def train_epoch(self, X: Tensor, y: Tensor, hooks: TrialHooks) -> list[float]:
        """One epoch over the data for every active trial; their mean training losses."""
        self.base.train()
        totals = torch.zeros(len(self.active), dtype=torch.float64, device=self.device)
        for xb, yb, stacked in self.batches(X, y):
            with _autocast(self.device):
                raw = self.forward(xb, stacked)
            per_trial = self.loss_fn(raw, yb)
            self.optimizer.zero_grad(set_to_none=True)
            per_trial.sum().backward()
            self.optimizer.step()
            totals += per_trial.detach().double() * yb.shape[-1]
            if hooks.should_stop is not None and (reason := hooks.should_stop()):
                raise TrainingStopped(reason)
        return (totals / len(X)).tolist()

    @torch.no_grad()
    def validate(self, Xva: Tensor) -> Tensor:
        """Raw validation outputs (T, N, K or 1) of every active trial, on the CPU."""
        self.base.eval()
        chunks, step = [], self.cfg.eval_batch_size
        for start in range(0, len(Xva), step):
            with _autocast(self.device):
                chunks.append(self.forward(Xva[start:start + step], False).float().cpu())
        return torch.cat(chunks, dim=1)

    def end_epoch(self, epoch: int, train_losses: list[float], val_raw: Tensor,
                  labels: Tensor, hooks: TrialHooks) -> list[int]:
        """The rule of `fit` for every active trial; the rows that train on."""
        still: list[int] = []
        rows = epoch_rows(epoch, train_losses, class_logits(val_raw), labels, self.cfg.n_bins)
        for r, (t, row) in enumerate(zip(self.active, rows, strict=True)):
            if row is None:
                raise TrialDivergedError(t.index, epoch)
            t.history.append(row)
            t.epochs_run += 1
            if t.stop.update(row):
                t.best_state = _trial_state(self.params, r)
            if hooks.on_epoch:
                hooks.on_epoch(t.index, dict(row))
            if not t.stop.stopped:
                still.append(r)
        return still


def _drop_canceled(stack: _Stack, hooks: TrialHooks) -> None:
    """Take the trials canceled since the last epoch out of the stack."""
    if hooks.trial_canceled is None:
        return
    keep = [r for r, t in enumerate(stack.active) if not hooks.trial_canceled(t.index)]
    for r, t in enumerate(stack.active):
        t.canceled = r not in keep
    stack.keep(keep)


def _stop_or_all_canceled(stack: _Stack, hooks: TrialHooks) -> str | None:
    """Why the whole stack should stop now: the group's stop, or every trial canceled."""
    reason = hooks.should_stop() if hooks.should_stop is not None else None
    canceled = hooks.trial_canceled
    gone = canceled is not None and all(canceled(t.index) for t in stack.active)
    return reason or ("canceled" if gone else None)


def _train_stack(stack: _Stack, p0: PreparedExperiment, hooks: TrialHooks) -> float:
    """Every epoch of the stacked trials (until all stopped or were canceled); seconds taken."""
    X, y = p0.Xtr.to(stack.device), p0.ytr.to(stack.device)
    Xva, labels = p0.Xva.to(stack.device), p0.yva.cpu()
    t0 = time.perf_counter()
    for epoch in range((stack.resumed_from or 0) + 1, stack.cfg.epochs + 1):
        _drop_canceled(stack, hooks)
        if not stack.active:
            break
        train_losses = stack.train_epoch(X, y, hooks)
        still = stack.end_epoch(epoch, train_losses, stack.validate(Xva), labels, hooks)
        if epoch == stack.cfg.epochs:
            for r, t in enumerate(stack.active):
                t.final_state = _trial_state(stack.params, r)
        else:
            stack.keep(still)
            if hooks.checkpoint is not None and stack.active:
                hooks.checkpoint(group_checkpoint.handoff(stack, epoch))
        pause_if_requested(epoch, lambda: _stop_or_all_canceled(stack, hooks))
        if not stack.active:
            break
    return time.perf_counter() - t0


def _new_stack(preps: list[PreparedExperiment], device: torch.device, hooks: TrialHooks
               ) -> _Stack:
    """The stack of `preps`, resumed from `hooks.resume` when that checkpoint fits them."""
    stack = _Stack(preps, device, hooks.trial_keys)
    if hooks.resume is not None and group_checkpoint.resume_or_none(stack, hooks.resume) is None:
        stack = _Stack(preps, device, hooks.trial_keys)  # unusable (logged): a fresh start
    return stack


def _run_stacked(preps: list[PreparedExperiment], hooks: TrialHooks
                 ) -> list[ExperimentOutput | None]:
    """Train all trials as one stacked model, then finish them together (`finish_trials`)."""
    p0, cfg0 = preps[0], preps[0].cfg
    device = resolve_device(cfg0.device)
    if cfg0.augment and p0.image_shape is None:
        raise SpecError("training.augment shifts images and needs image-shaped data; set it "
                        "to false for this dataset")
    stack = _new_stack(preps, device, hooks)
    train_s = _train_stack(stack, p0, hooks)
    done = [i for i, t in enumerate(stack.trials) if not t.canceled]
    trained = [_trained(stack, i, len(p0.Xtr), train_s, device) for i in done]
    finished = finish_trials([preps[i] for i in done], [m for m, _ in trained],
                             [f for _, f in trained]) if done else []
    outputs: list[ExperimentOutput | None] = [None] * len(preps)
    for i, out in zip(done, finished, strict=True):
        outputs[i] = out
    return outputs


def _trained(stack: _Stack, i: int, n_train: int, train_s: float, device: torch.device
             ) -> tuple[nn.Module, FitResult]:
    """Trial i's model holding its selected (best or last) weights, and its FitResult."""
    t, model = stack.trials[i], stack.models[i]
    state = t.best_state if t.best_state is not None else t.final_state
    assert state is not None  # every uncanceled trial trained at least one epoch
    model.load_state_dict(state)
    return model.to(device), FitResult(
        history=t.history, best_epoch=t.stop.best_epoch, stopped_early=t.stop.stopped,
        train_s=train_s, samples_per_s=n_train * t.epochs_run / train_s if train_s > 0 else 0.0,
        device=str(device), resumed_from_epoch=stack.resumed_from,
        extra={"stacked_trials": len(stack.trials)})
