"""The training inner loop over cached features (``train.fit`` / ``train_epoch`` / ``evaluate``,
``CachedFeatures.batch``): fast paths must give exactly what the straightforward loop gives."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from autofuse.encoders import EncoderSpec
from autofuse.encoders.cache import CachedFeatures
from autofuse.metrics import OBJECTIVES, compute_metrics, is_better
from autofuse.model import build_model
from autofuse.spec import ArchitectureSpec, FusionSpec, HeadSpec, TrainingSpec
from autofuse.train import TrainData, TrialFault, evaluate, fit, train_epoch
from autofuse.types import FeatureShape, ModalityFeatures

N, N_TRAIN, N_VAL = 150, 100, 25


def cached(seed: int, dim: int, n_tokens: int, levels: list[tuple[int, int]], mask: bool):
    """Random frozen-encoder outputs as the feature cache holds them (absent rows are zeros)."""
    g = torch.Generator().manual_seed(seed)
    present = torch.rand(N, generator=g) > 0.15
    p2, p3 = present[:, None], present[:, None, None]
    token_mask = None
    tokens = torch.randn(N, n_tokens, dim, generator=g)
    if mask:
        lengths = torch.randint(1, n_tokens + 1, (N,), generator=g)
        token_mask = (torch.arange(n_tokens)[None, :] < lengths[:, None]) & p2
        tokens = tokens * token_mask[:, :, None]
    return CachedFeatures(
        pooled=torch.randn(N, dim, generator=g) * p2,
        tokens=(tokens * p3).half(),
        levels=[(torch.randn(N, nl, dl, generator=g) * p3).half() for nl, dl in levels],
        present=present,
        token_mask=token_mask,
        feature_shape=FeatureShape(dim, n_tokens, tuple(levels)),
    )


def make_case(task: str, point: str, modality_dropout: float = 0.2):
    """A spec with two frozen modalities, its dataset info and TrainData over cached features."""
    inputs = {
        "text": cached(1, 12, 5, [(2, 12), (2, 12)], mask=True),
        "image": cached(2, 8, 1, [(4, 4), (4, 8)], mask=False),
    }
    rng = np.random.default_rng(0)
    order = rng.permutation(N)
    splits = {
        "train": order[:N_TRAIN],
        "val": order[N_TRAIN : N_TRAIN + N_VAL],
        "test": order[N_TRAIN + N_VAL :],
    }
    signal = (inputs["text"].pooled[:, 0] + inputs["image"].pooled[:, 0]).numpy()
    if task == "classification":
        y_raw = np.digitize(signal, [-0.5, 0.5]).astype(np.int64)
        y = torch.as_tensor(y_raw, dtype=torch.long)
        classes, stats = [0, 1, 2], (0.0, 1.0)
    else:
        y_raw = 3.0 * signal + 10.0
        tr = y_raw[splits["train"]]
        stats = (float(tr.mean()), float(tr.std()))
        y = torch.as_tensor((y_raw - stats[0]) / stats[1], dtype=torch.float32)
        classes = None
    data = TrainData(task, y, y_raw, inputs, splits, stats)
    spec = ArchitectureSpec(
        encoders={
            "text": EncoderSpec(name="text.sentence_transformer", mode="frozen"),
            "image": EncoderSpec(name="image.timm", mode="frozen"),
        },
        fusion=FusionSpec(
            family="encoder_decoder",
            method="early",
            point=point,
            params={"hidden": 16, "depth": 2, "dropout": 0.2},
        ),
        head=HeadSpec(fused_dim=16, dropout=0.1),
        training=TrainingSpec(
            lr=3e-3, batch_size=16, epochs=4, patience=10, modality_dropout=modality_dropout
        ),
    )
    info = {
        "task": task,
        "classes": classes,
        "modalities": {
            m: {"type": m, "state": {}, "feature_shape": f.feature_shape.to_dict()}
            for m, f in inputs.items()
        },
    }
    return spec, info, data


def new_model(spec: ArchitectureSpec, info: dict) -> nn.Module:
    torch.manual_seed(spec.training.seed)  # as CandidateRunner.build seeds it
    return build_model(spec, info, skip_frozen=True)


def fit_kwargs(spec: ArchitectureSpec) -> dict:
    t = spec.training
    return dict(
        lr=t.lr,
        weight_decay=t.weight_decay,
        batch_size=t.batch_size,
        epochs=t.epochs,
        patience=t.patience,
        aux_weight=t.aux_weight,
        seed=t.seed,
        device=torch.device("cpu"),
    )


def reference_fit(model: nn.Module, data: TrainData, spec: ArchitectureSpec):
    """The straightforward loop fit stands for: per batch advanced indexing, float16 -> float32,
    loss.item(), a deep copy of the best weights; validation in chunks of 256 rows."""
    t = spec.training
    metric, direction = OBJECTIVES[data.task]
    g = torch.Generator().manual_seed(t.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    if data.task == "classification":
        criterion = nn.CrossEntropyLoss()
    else:

        def criterion(out, y):
            return nn.functional.mse_loss(out.squeeze(-1), y)

    def batch(idx: np.ndarray) -> dict[str, ModalityFeatures]:
        i = torch.as_tensor(idx)
        return {
            m: ModalityFeatures(
                pooled=f.pooled[i].float(),
                tokens=f.tokens[i].float(),
                levels=[lv[i].float() for lv in f.levels],
                present=f.present[i],
                token_mask=None if f.token_mask is None else f.token_mask[i],
            )
            for m, f in data.inputs.items()
        }

    history, best_val, best_epoch, best_state = [], None, 0, None
    for epoch in range(1, t.epochs + 1):
        model.train()
        train_idx = data.splits["train"]
        perm = train_idx[torch.randperm(len(train_idx), generator=g).numpy()]
        total, n = 0.0, 0
        for s in range(0, len(perm), t.batch_size):
            idx = perm[s : s + t.batch_size]
            if len(idx) < 2 and len(perm) > 2:
                continue
            out, aux = model(batch(idx))
            loss = criterion(out.float(), data.y[torch.as_tensor(idx)]) + t.aux_weight * aux
            assert torch.isfinite(loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            total += loss.item() * len(idx)
            n += len(idx)
        model.eval()
        val_idx = data.splits["val"]
        with torch.no_grad():
            outs = [model(batch(val_idx[s : s + 256]))[0] for s in range(0, len(val_idx), 256)]
        res = torch.cat(outs).numpy()
        if data.task == "regression":
            res = res * data.target_stats[1] + data.target_stats[0]
        val = compute_metrics(data.task, data.y_raw[val_idx], res)
        val["train_loss"] = total / n
        history.append({"epoch": epoch, **val})
        if is_better(val[metric], best_val, direction):
            best_val, best_epoch = val[metric], epoch
            best_state = copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return history, best_epoch


@pytest.mark.parametrize(
    "task, point", [("classification", "hybrid"), ("regression", "late")], ids=str
)
def test_fit_matches_the_straightforward_loop(task, point):
    spec, info, data = make_case(task, point)
    ref_model = new_model(spec, info)
    torch.manual_seed(123)  # dropout draws come from the global generator in both runs
    ref_history, ref_best = reference_fit(ref_model, data, spec)

    model = new_model(spec, info)
    torch.manual_seed(123)
    res = fit(model, data, **fit_kwargs(spec))

    assert res.history == ref_history  # every metric and train loss, exactly
    assert res.best_epoch == ref_best
    assert res.val_metrics == {k: v for k, v in ref_history[ref_best - 1].items() if k != "epoch"}
    for (k, a), (k2, b) in zip(
        model.state_dict().items(), ref_model.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(a, b), k
    assert evaluate(model, data, "test", torch.device("cpu")) == evaluate(
        ref_model, data, "test", torch.device("cpu")
    )


def test_cached_features_batch_is_the_float32_rows():
    feats = cached(5, 6, 4, [(2, 6), (3, 4)], mask=True)
    idx = np.array([7, 3, 3, 140, 0, 99])  # any order, repeats allowed
    for given in (idx, torch.as_tensor(idx), idx.tolist()):
        b = feats.batch(given)
        i = torch.as_tensor(idx)
        assert b.pooled.dtype == b.tokens.dtype == torch.float32
        assert all(lv.dtype == torch.float32 for lv in b.levels)
        assert torch.equal(b.pooled, feats.pooled.float()[i])
        assert torch.equal(b.tokens, feats.tokens.float()[i])
        for got, lv in zip(b.levels, feats.levels, strict=True):
            assert torch.equal(got, lv.float()[i])
        assert torch.equal(b.present, feats.present[i])
        assert torch.equal(b.token_mask, feats.token_mask[i])
    assert feats.on_device("cpu") is feats  # already there: no copy
    assert feats.nbytes == sum(t.numel() * t.element_size() for t in feats.tensors().values())
    moved = feats.to("cpu").batch(torch.as_tensor(idx))
    assert torch.equal(moved.tokens, feats.batch(idx).tokens)


@pytest.mark.parametrize("stop_after", [1, 2])
def test_fit_resumed_from_a_checkpoint_continues_identically(stop_after):
    spec, info, data = make_case("classification", "hybrid")
    states = {}

    def keep(epoch, make_state):
        states[epoch] = copy.deepcopy(make_state())

    model = new_model(spec, info)
    torch.manual_seed(7)
    full = fit(model, data, **fit_kwargs(spec), on_checkpoint=keep)

    torch.manual_seed(999)  # whatever the global generator holds now, resume restores it
    resumed_model = new_model(spec, info)
    resumed = fit(resumed_model, data, **fit_kwargs(spec), resume=states[stop_after])

    assert resumed.resumed_from_epoch == stop_after
    assert resumed.epochs_trained == spec.training.epochs - stop_after
    assert resumed.history == full.history
    assert (resumed.best_epoch, resumed.val_metrics) == (full.best_epoch, full.val_metrics)
    for (k, a), b in zip(
        model.state_dict().items(), resumed_model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k


def test_non_finite_loss_ends_the_epoch_as_diverged():
    spec, info, data = make_case("regression", "late", modality_dropout=0.0)
    model = new_model(spec, info)
    bad = data.y.clone()
    bad[data.splits["train"][:3]] = float("nan")
    data = TrainData(data.task, bad, data.y_raw, data.inputs, data.splits, data.target_stats)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    with pytest.raises(TrialFault) as err:
        train_epoch(
            model,
            data,
            opt,
            lambda out, y: nn.functional.mse_loss(out.squeeze(-1), y),
            params,
            torch.Generator().manual_seed(0),
            batch_size=16,
            aux_weight=0.0,
            device=torch.device("cpu"),
            epoch=3,
        )
    assert err.value.reason == "diverged" and "epoch 3" in str(err.value)
    assert not math.isnan(float(data.y[data.splits["train"][5]]))
