"""Fit and evaluate one candidate: AdamW, early stopping on the validation metric, per-epoch reports."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from autofuse.metrics import OBJECTIVES, compute_metrics, is_better
from autofuse.types import ModalityFeatures

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


class TrialFault(Exception):
    """A candidate that cannot finish: ``reason`` is diverged | oom | timeout | invalid."""

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason = reason


@dataclass
class TrainData:
    """Everything a candidate trains on, already on tensors.

    Attributes:
        task: classification | regression | multilabel.
        y: training targets: class indices ``[N]`` / standardised values ``[N]`` / multi-hot ``[N, C]``.
        y_raw: targets on the original scale, for metrics.
        inputs: per modality a PreparedModality (raw inputs for a trainable encoder) or
            CachedFeatures (frozen encoder outputs from the feature cache); both have ``batch(idx)``.
        splits: row indices per split.
        target_stats: ``(mean, std)`` used to standardise a regression target.
    """

    task: str
    y: torch.Tensor
    y_raw: np.ndarray
    inputs: dict
    splits: dict[str, np.ndarray]
    target_stats: tuple[float, float] = (0.0, 1.0)

    @classmethod
    def from_dataset(
        cls, ds, inputs: dict | None = None, splits: dict[str, np.ndarray] | None = None
    ) -> TrainData:
        """Targets of ``ds`` as tensors (a regression target standardised with the statistics of
        its training rows), its split indices (or ``splits``) and ``inputs``."""
        splits = splits if splits is not None else {s: ds.indices(s) for s in SPLITS}
        y_raw = np.asarray(ds.y)
        stats = (0.0, 1.0)
        if ds.task == "classification":
            y = torch.as_tensor(y_raw, dtype=torch.long)
        elif ds.task == "regression":
            tr = y_raw[splits["train"]].astype(np.float64)
            stats = (float(tr.mean()), float(tr.std() or 1.0))
            y = torch.as_tensor((y_raw - stats[0]) / stats[1], dtype=torch.float32)
        else:
            y = torch.as_tensor(y_raw, dtype=torch.float32)
        return cls(ds.task, y, y_raw, dict(inputs or {}), splits, stats)

    def with_inputs(self, inputs: dict) -> TrainData:
        """The same targets and splits over other inputs (another candidate, an ablation)."""
        return dataclasses.replace(self, inputs=dict(inputs))


@dataclass
class FitResult:
    val_metrics: dict[str, float]
    best_epoch: int
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)
    train_time_s: float = 0.0
    resumed_from_epoch: int = 0  # > 0 when a checkpoint of an earlier attempt was continued
    epochs_trained: int = 0  # epochs actually run by this call
    #: stopped by the deadline after at least one epoch: a low-fidelity result (best so far)
    timed_out: bool = False


def make_batch(
    data: TrainData,
    idx: np.ndarray | torch.Tensor,
    device: torch.device,
    idx_on_device: torch.Tensor | None = None,
) -> dict:
    """Slice every modality at ``idx`` and move it to ``device``.

    Args:
        idx: row indices (array or CPU LongTensor).
        idx_on_device: the same indices already on ``device``, given to sources that live there
            (features copied to the device for a trial), so a batch copies no indices over.

    Raw inputs go to a CUDA device with ``non_blocking=True``: asynchronous when the source
    gathers its batches into page-locked memory (``CandidateRunner`` wraps prepared inputs so),
    an ordinary copy otherwise.
    """
    t = torch.as_tensor(idx, dtype=torch.long)
    batch = {}
    for m, src in data.inputs.items():
        on_device = idx_on_device is not None and _same_device(getattr(src, "device", None), device)
        item = src.batch(idx_on_device if on_device else t)
        if isinstance(item, ModalityFeatures):
            batch[m] = item if _same_device(item.pooled.device, device) else item.to(device)
        else:
            x, present = item
            x = {k: _to(v, device) for k, v in x.items()} if isinstance(x, dict) else _to(x, device)
            batch[m] = (x, _to(present, device))
    return batch


def _to(x: torch.Tensor | list, device: torch.device) -> torch.Tensor | list:
    """``x`` on ``device`` (host-to-GPU copies asynchronous; a list of strings stays as is)."""
    if not torch.is_tensor(x):
        return x
    return x.to(device, non_blocking=device.type == "cuda")


def amp_dtype(device: torch.device, amp: bool, on_cpu: bool = False) -> torch.dtype | None:
    """The autocast dtype of a training forward pass, or None (float32).

    bfloat16 with ``amp`` on a CUDA device that supports it natively (no float16: it would need a
    gradient scaler); on the CPU only when ``on_cpu`` is asked for as well (tests compare mixed
    precision with float32 there), so ``--amp`` changes nothing on a CPU worker.
    """
    if not amp:
        return None
    if device.type == "cuda":
        with torch.cuda.device(device):
            if torch.cuda.is_bf16_supported(including_emulation=False):
                return torch.bfloat16
        log.info("--amp: %s has no native bfloat16; training in float32", device)
        return None
    return torch.bfloat16 if device.type == "cpu" and on_cpu else None


def autocast(dtype: torch.dtype | None, device: torch.device) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``, or a null context for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _same_device(a: torch.device | None, b: torch.device) -> bool:
    """Whether tensors on ``a`` are on ``b`` (``cuda`` matches ``cuda:0`` and the like)."""
    if a is None or a.type != b.type:
        return False
    return a.index is None or b.index is None or a.index == b.index


def _row_indices(
    idx: np.ndarray | torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``idx`` as a CPU LongTensor and on ``device`` (the same tensor on the CPU)."""
    t = torch.as_tensor(idx, dtype=torch.long)
    return t, t.to(device)


def loss_fn(task: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if task == "classification":
        return nn.CrossEntropyLoss()
    if task == "regression":
        return lambda out, y: nn.functional.mse_loss(out.squeeze(-1), y)
    return nn.BCEWithLogitsLoss()


@torch.no_grad()
def predict_outputs(
    model: nn.Module, data: TrainData, idx: np.ndarray, device: torch.device, batch_size: int = 256
) -> np.ndarray:
    """Raw outputs for rows ``idx`` (regression de-standardised to the original scale)."""
    model.eval()
    rows, rows_dev = _row_indices(idx, device)
    outs = []
    for s in range(0, len(rows), batch_size):
        sl = slice(s, s + batch_size)
        out, _ = model(make_batch(data, rows[sl], device, rows_dev[sl]))
        outs.append(out.float())
    if not outs:
        return np.zeros((0, 1), dtype=np.float32)
    res = torch.cat(outs).cpu().numpy()
    if data.task == "regression":
        mean, std = data.target_stats
        res = res * std + mean
    return res


def evaluate(
    model: nn.Module, data: TrainData, split: str, device: torch.device
) -> dict[str, float]:
    idx = data.splits[split]
    return compute_metrics(data.task, data.y_raw[idx], predict_outputs(model, data, idx, device))


def fit(
    model: nn.Module,
    data: TrainData,
    *,
    lr: float,
    weight_decay: float,
    batch_size: int,
    epochs: int,
    patience: int,
    aux_weight: float,
    seed: int,
    device: torch.device,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    deadline: float | None = None,
    on_checkpoint: Callable[[int, Callable[[], dict]], None] | None = None,
    resume: dict | None = None,
    amp: bool = False,
    encoder_lr_scale: float = 1.0,
    first_epoch_free: bool = False,
    amp_on_cpu: bool = False,
) -> FitResult:
    """Train with AdamW and early stopping; keep the best validation epoch's weights in ``model``.
    Without validation rows (a refit on train + validation): exactly ``epochs`` epochs, the last
    epoch's weights kept.

    Args:
        on_epoch: called after every epoch with ``(epoch, val_metrics)``; may raise (e.g. Optuna's
            ``TrialPruned``) to stop the candidate.
        deadline: ``time.monotonic()`` value after which training stops: after at least one
            epoch the best epoch so far is the result (``timed_out``, a low-fidelity result);
            before the first epoch ends it is a ``TrialFault("timeout")``.
        on_checkpoint: called after every epoch with ``(epoch, make_state)``; ``make_state()``
            returns the full training state (model, optimiser, best weights so far, history, RNG)
            so a killed trial can continue where it stopped. It is built only when asked for:
            copying the state every epoch is not free.
        resume: such a state; training continues from the epoch after it.
        amp: bfloat16 autocast for the training forward pass on a CUDA device that supports
            it (see :func:`amp_dtype`; validation and test stay in float32, as prediction runs).
        amp_on_cpu: with ``amp``, autocast on the CPU too (tests).
        encoder_lr_scale: the encoders' learning rate is ``lr`` times this (fine-tuning trained
            encoders with a lower rate than the fusion and the head).
        first_epoch_free: the deadline applies from the second epoch on (a run that must give a
            result, such as a modality's only encoder, trains at least one epoch).

    Raises:
        TrialFault: ``diverged`` on a non-finite loss, ``timeout`` past the deadline before the
            first epoch ended.
    """
    metric, direction = OBJECTIVES[data.task]
    g = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        param_groups(model, lr, encoder_lr_scale), lr=lr, weight_decay=weight_decay
    )
    criterion = loss_fn(data.task)
    best_val: float | None = None
    best_state = snapshot_state(model)
    best_epoch, history, stale = 0, [], 0
    t0 = time.monotonic()
    start = 1
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        g.set_state(resume["generator"])
        if "rng" in resume:  # the global generators (dropout) as they were: the same masks
            torch.set_rng_state(resume["rng"])
        if "cuda_rng" in resume and device.type == "cuda":
            torch.cuda.set_rng_state(resume["cuda_rng"], device)
        best_state, best_val = resume["best_state"], resume["best_val"]
        best_epoch, history, stale = resume["best_epoch"], list(resume["history"]), resume["stale"]
        start = resume["epoch"] + 1
    # no validation rows (a refit on every labelled row): exactly ``epochs`` epochs, the last kept
    validate = len(data.splits["val"]) > 0
    epoch = start - 1
    if resume is not None and stale >= patience:
        start = epochs + 1  # it had already stopped early
    trained = 0
    timed_out = False
    for epoch in range(start, epochs + 1):
        trained += 1
        try:
            train_loss = train_epoch(
                model,
                data,
                opt,
                criterion,
                params,
                g,
                batch_size=batch_size,
                aux_weight=aux_weight,
                device=device,
                amp=amp,
                amp_on_cpu=amp_on_cpu,
                # the first epoch of a run that must give a result finishes past the deadline
                deadline=None if first_epoch_free and not history else deadline,
                epoch=epoch,
            )
        except TrialFault as f:
            if f.reason != "timeout" or not history:
                raise
            timed_out = True  # the epoch in progress is dropped; the best one so far stands
            break
        if not validate:
            history.append({"epoch": epoch, "train_loss": train_loss})
            best_epoch = epoch
            if on_epoch is not None:
                on_epoch(epoch, {"train_loss": train_loss})
            continue
        val = evaluate(model, data, "val", device)
        val["train_loss"] = train_loss
        history.append({"epoch": epoch, **val})
        score = val.get(metric, float("nan"))
        if not math.isfinite(score) and data.task == "regression":
            raise TrialFault("diverged", f"non-finite validation {metric} at epoch {epoch}")
        if is_better(score, best_val, direction):
            best_val, best_epoch, stale = score, epoch, 0
            best_state = snapshot_state(model)
        else:
            stale += 1
        if on_checkpoint is not None:
            on_checkpoint(
                epoch,
                functools.partial(
                    training_state,
                    model,
                    opt,
                    g,
                    epoch=epoch,
                    best_state=best_state,
                    best_val=best_val,
                    best_epoch=best_epoch,
                    history=history,
                    stale=stale,
                ),
            )
        if on_epoch is not None:
            on_epoch(epoch, val)
        if deadline is not None and time.monotonic() > deadline:
            timed_out = epoch < epochs and stale < patience
            break
        if stale >= patience:
            break
    if validate:
        model.load_state_dict(best_state)
    if best_epoch == 0:  # nothing ran (a resumed run that had already stopped)
        val_metrics = {}
    else:
        val_metrics = {k: v for k, v in history[best_epoch - 1].items() if k != "epoch"}
    return FitResult(
        val_metrics=val_metrics,
        best_epoch=best_epoch,
        epochs_run=len(history),
        history=history,
        train_time_s=time.monotonic() - t0,
        resumed_from_epoch=start - 1 if resume is not None else 0,
        epochs_trained=trained,
        timed_out=timed_out,
    )


def snapshot_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``model.state_dict()`` that later training does not change (what
    ``copy.deepcopy`` of it gives, the module metadata included, without its per-tensor cost)."""
    state = model.state_dict()
    out: OrderedDict[str, torch.Tensor] = OrderedDict(
        (k, v.detach().clone()) for k, v in state.items()
    )
    meta = getattr(state, "_metadata", None)
    if meta is not None:
        out._metadata = copy.deepcopy(meta)  # type: ignore[attr-defined]
    return out


def training_state(
    model: nn.Module, opt: torch.optim.Optimizer, g: torch.Generator, **progress
) -> dict:
    """Everything ``fit(resume=...)`` needs to continue after ``progress["epoch"]``: weights,
    optimiser, the batch-order generator and the global ones (dropout draws), progress."""
    state = {
        "model": snapshot_state(model),
        "optimizer": copy.deepcopy(opt.state_dict()),
        "generator": g.get_state(),
        "rng": torch.get_rng_state(),
        **{k: list(v) if isinstance(v, list) else v for k, v in progress.items()},
    }
    device = next((p.device for p in model.parameters()), None)
    if device is not None and device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    return state


def param_groups(model: nn.Module, lr: float, encoder_lr_scale: float = 1.0) -> list[dict]:
    """Trainable parameters in AdamW groups: the encoders' at ``lr * encoder_lr_scale``, the rest
    (fusion, head) at ``lr``."""
    enc = getattr(model, "encoders", None)
    enc_ids = {id(p) for p in enc.parameters()} if enc is not None else set()
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if id(p) not in enc_ids], "lr": lr},
        {"params": [p for p in trainable if id(p) in enc_ids], "lr": lr * encoder_lr_scale},
    ]
    return [gr for gr in groups if gr["params"]]


def train_epoch(
    model: nn.Module,
    data: TrainData,
    opt: torch.optim.Optimizer,
    criterion,
    params: list[torch.Tensor],
    g: torch.Generator,
    *,
    batch_size: int,
    aux_weight: float,
    device: torch.device,
    amp: bool = False,
    deadline: float | None = None,
    epoch: int = 0,
    amp_on_cpu: bool = False,
) -> float:
    """One pass over the training rows in a seeded random order; returns the mean loss.

    The batch losses stay on the device and are read once, at the end of the epoch (one
    synchronisation per epoch instead of one per batch); a non-finite one then ends the
    candidate as ``diverged``, and so it does when the deadline or an error stops the epoch.

    Raises:
        TrialFault: ``diverged`` on a non-finite loss, ``timeout`` past the deadline.
    """
    model.train()
    train_idx = data.splits["train"]
    perm, perm_dev = _row_indices(
        train_idx[torch.randperm(len(train_idx), generator=g).numpy()], device
    )
    y = data.y.to(device)
    dtype = amp_dtype(device, amp, amp_on_cpu)
    losses: list[torch.Tensor] = []
    sizes: list[int] = []
    try:
        for s in range(0, len(perm), batch_size):
            idx, idx_dev = perm[s : s + batch_size], perm_dev[s : s + batch_size]
            if len(idx) < 2 and len(perm) > 2:
                continue  # a batch of one breaks batch statistics; skip the remainder
            with autocast(dtype, device):
                out, aux = model(make_batch(data, idx, device, idx_dev))
            loss = criterion(out.float(), y.index_select(0, idx_dev)) + aux_weight * aux.float()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            losses.append(loss.detach())
            sizes.append(len(idx))
            if deadline is not None and time.monotonic() > deadline:
                if _any_nonfinite(losses):
                    raise TrialFault("diverged", f"non-finite loss at epoch {epoch}")
                raise TrialFault("timeout", f"trial time limit reached in epoch {epoch}")
    except TrialFault:
        raise
    except Exception as e:  # e.g. an error caused by weights a non-finite loss already spoilt
        if _any_nonfinite(losses):
            raise TrialFault("diverged", f"non-finite loss at epoch {epoch}") from e
        raise
    values = torch.stack(losses).tolist() if losses else []  # the epoch's one synchronisation
    if not all(math.isfinite(v) for v in values):
        raise TrialFault("diverged", f"non-finite loss at epoch {epoch}")
    total = 0.0
    for v, k in zip(values, sizes, strict=True):
        total += v * k  # in batch order, in double precision: as a per-batch loss.item() sum
    return total / max(sum(sizes), 1)


def _any_nonfinite(losses: list[torch.Tensor]) -> bool:
    """Whether a batch loss is NaN or infinite (False when they cannot be read)."""
    try:
        return bool(losses) and not bool(torch.isfinite(torch.stack(losses)).all())
    except Exception:  # reading them failed too (e.g. out of device memory): not a divergence
        return False


@torch.no_grad()
def measure_latency_ms(
    model: nn.Module, data: TrainData, device: torch.device, n: int = 32, repeats: int = 3
) -> float:
    """Median milliseconds per sample for a forward pass on ``n`` validation rows."""
    idx = data.splits["val"][:n] if len(data.splits["val"]) else data.splits["train"][:n]
    if len(idx) == 0:
        return float("nan")
    model.eval()
    rows, rows_dev = _row_indices(idx, device)
    batch = make_batch(data, rows, device, rows_dev)
    model(batch)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model(batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - t) * 1000 / len(idx))
    return float(np.median(times))


def count_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


class _Ablated:
    """A modality source whose batches are removed (absent) or perturbed with Gaussian noise."""

    def __init__(self, src, how: str, sigma: float = 0.0, seed: int = 0) -> None:
        self.src, self.how, self.sigma, self.seed = src, how, sigma, seed

    def batch(self, idx: torch.Tensor):
        item = self.src.batch(idx)
        if isinstance(item, ModalityFeatures):
            if self.how == "remove":
                return ModalityFeatures(
                    pooled=torch.zeros_like(item.pooled),
                    tokens=torch.zeros_like(item.tokens),
                    levels=[torch.zeros_like(x) for x in item.levels],
                    present=torch.zeros_like(item.present),
                    token_mask=item.token_mask,
                )
            g = torch.Generator().manual_seed(self.seed + int(idx[0]) if len(idx) else self.seed)

            def noisy(x: torch.Tensor) -> torch.Tensor:
                scale = x.float().std().clamp_min(1e-6) * self.sigma
                noise = torch.randn(x.shape, generator=g).to(device=x.device, dtype=x.dtype)
                return x + noise * scale

            return ModalityFeatures(
                pooled=noisy(item.pooled),
                tokens=noisy(item.tokens),
                levels=[noisy(x) for x in item.levels],
                present=item.present,
                token_mask=item.token_mask,
            )
        x, present = item
        if self.how == "remove":
            zeros = (
                {k: torch.zeros_like(v) for k, v in x.items()}
                if isinstance(x, dict)
                else (torch.zeros_like(x) if torch.is_tensor(x) else ["" for _ in x])
            )
            return zeros, torch.zeros_like(present)
        g = torch.Generator().manual_seed(self.seed + int(idx[0]) if len(idx) else self.seed)

        def noisy_t(v: torch.Tensor) -> torch.Tensor:
            if not v.is_floating_point() and v.dtype != torch.uint8:
                return v  # token ids / category indices: noise is not defined on them
            vf = v.float()
            noise = torch.randn(vf.shape, generator=g).to(vf.device)
            out = vf + noise * vf.std().clamp_min(1e-6) * self.sigma
            return out.clamp(0, 255).to(v.dtype) if v.dtype == torch.uint8 else out.to(v.dtype)

        if isinstance(x, dict):
            return {k: noisy_t(v) for k, v in x.items()}, present
        return (noisy_t(x) if torch.is_tensor(x) else x), present


def ablate(
    data: TrainData, modality: str, how: str = "remove", sigma: float = 0.5, seed: int = 0
) -> TrainData:
    """A copy of ``data`` where ``modality`` is removed (every row absent) or gets noise.

    Used to measure robustness: ``how="remove"`` drops the modality at test time (the model must
    cope through ``present``), ``how="noise"`` adds Gaussian noise of ``sigma`` times the input's
    standard deviation (uint8 images are clamped; token ids and categories are left unchanged).
    """
    if how not in ("remove", "noise"):
        raise ValueError(f"how must be 'remove' or 'noise', got {how!r}")
    inputs = dict(data.inputs)
    inputs[modality] = _Ablated(inputs[modality], how, sigma, seed)
    return data.with_inputs(inputs)
