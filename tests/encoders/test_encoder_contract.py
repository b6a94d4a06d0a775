"""Every registered encoder, in every mode it declares, passes the same contract (timm style)."""

from __future__ import annotations

import pytest
import torch

from autofuse.encoders import (
    ENCODERS,
    EncoderSpec,
    create_encoder,
    get_encoder_entry,
    list_encoders,
)
from autofuse.encoders.base import segment_mean
from autofuse.errors import ConfigError
from autofuse.types import FeatureShape, ModalityFeatures

CASES = [(e.name, mode) for e in ENCODERS for mode in e.meta["modes"]]
DIM = 16


def _build(name: str, mode: str, prepare, dim: int = DIM):
    spec = EncoderSpec(name=name, mode=mode, dim=dim)
    prepared = prepare(spec)
    return spec, prepared, create_encoder(spec, prepared.state)


def check_encoder_contract(enc, prepared) -> ModalityFeatures:
    """Shapes match ``feature_shape``, absent rows are zeros, padded tokens are zeros."""
    fs: FeatureShape = enc.feature_shape
    n = len(prepared)
    x, present = prepared.batch(torch.arange(n))
    f = enc(x, present)
    assert isinstance(f, ModalityFeatures)
    assert f.pooled.shape == (n, fs.dim)
    assert f.tokens.shape == (n, fs.n_tokens, fs.dim)
    assert len(f.levels) >= 2 and len(f.levels) == len(fs.levels)
    for lv, (nl, dl) in zip(f.levels, fs.levels, strict=True):
        assert lv.shape == (n, nl, dl)
    assert f.present.dtype == torch.bool and torch.equal(f.present, present)
    absent = ~present
    assert absent.any(), "the test dataset has an absent row for every modality"
    for t in [f.pooled, f.tokens, *f.levels]:
        assert torch.isfinite(t).all()
        assert t[absent].abs().sum() == 0
        assert t[present].abs().sum() > 0
    if f.token_mask is not None:
        assert f.token_mask.shape == (n, fs.n_tokens) and f.token_mask.dtype == torch.bool
        assert not f.token_mask[absent].any()
        assert f.tokens[~f.token_mask].abs().sum() == 0
    return f


@pytest.mark.parametrize("name,mode", CASES, ids=[f"{n}-{m}" for n, m in CASES])
def test_encoder_contract(name, mode, prepare):
    torch.manual_seed(0)
    spec, prepared, enc = _build(name, mode, prepare)
    if mode == "frozen":
        assert not any(p.requires_grad for p in enc.parameters())
        enc.train()
        assert not enc.training, "a frozen encoder stays in eval mode"
    else:
        assert enc.feature_shape.dim == DIM, "trainable encoders output spec.dim"
        enc.train()
    f = check_encoder_contract(enc, prepared)
    if mode == "frozen":
        assert not f.pooled.requires_grad
        return
    loss = (
        f.pooled.pow(2).mean() + f.tokens.pow(2).mean() + sum(lv.pow(2).mean() for lv in f.levels)
    )
    loss.backward()
    params = [(n, p) for n, p in enc.named_parameters() if p.requires_grad]
    assert params
    missing = [n for n, p in params if p.grad is None]
    if mode == "scratch":
        assert not missing, f"parameters without gradient: {missing}"
    else:  # a pretrained backbone may hold unused parts (e.g. BERT's pooler)
        assert len(missing) <= 0.1 * len(params), missing


TRAINABLE = [(e.name, e.meta["modes"][-1]) for e in ENCODERS]


@pytest.mark.parametrize("name,mode", TRAINABLE, ids=[f"{n}-{m}" for n, m in TRAINABLE])
def test_state_dict_round_trip(name, mode, prepare):
    """Everything is registered: a second instance loading the state dict computes the same."""
    torch.manual_seed(1)
    spec, prepared, a = _build(name, mode, prepare)
    torch.manual_seed(2)
    b = create_encoder(spec, prepared.state)
    b.load_state_dict(a.state_dict())
    a.eval()
    b.eval()
    x, present = prepared.batch(torch.arange(6))
    with torch.no_grad():
        fa, fb = a(x, present), b(x, present)
    torch.testing.assert_close(fa.pooled, fb.pooled)
    torch.testing.assert_close(fa.tokens, fb.tokens)


def test_registry_entries_declare_modes_and_space():
    names = list_encoders()
    assert {
        "image.timm",
        "image.small_cnn",
        "audio.small_cnn",
        "audio.timm",
        "text.sentence_transformer",
        "text.small",
        "tabular.mlp",
        "timeseries.cnn1d",
        "timeseries.gru",
    } <= set(names)
    for name in names:
        e = get_encoder_entry(name)
        assert e.meta["modes"] and set(e.meta["modes"]) <= {"frozen", "finetune", "scratch"}
        assert e.meta["description"]
        for key, rng in e.meta["space"].items():
            assert key == "dim" or key in e.obj.defaults, (name, key)
            assert isinstance(rng, list) or {"low", "high"} <= set(rng), (name, key)
    assert list_encoders("text") == ["text.sentence_transformer", "text.small"]
    assert "image.small_cnn" not in list_encoders(mode="frozen")


def test_spec_json_round_trip_and_errors():
    spec = EncoderSpec(name="image.timm", mode="frozen", params={"model_name": "resnet18"})
    assert EncoderSpec.model_validate_json(spec.model_dump_json()) == spec
    with pytest.raises(ConfigError, match="unknown encoder"):
        create_encoder(EncoderSpec(name="image.nope", mode="scratch"), {})
    with pytest.raises(ConfigError, match="does not support mode"):
        create_encoder(EncoderSpec(name="image.small_cnn", mode="frozen"), {})
    with pytest.raises(ConfigError, match="unknown params"):
        create_encoder(EncoderSpec(name="image.small_cnn", mode="scratch", params={"depht": 3}), {})


def test_frozen_random_backbone_is_seeded():
    spec = EncoderSpec(name="image.timm", mode="frozen")
    a, b = create_encoder(spec, {}), create_encoder(spec, {})
    assert torch.equal(a.backbone.conv1.weight, b.backbone.conv1.weight)


def test_segment_mean_uses_real_tokens_only():
    x = torch.arange(6, dtype=torch.float32).view(1, 6, 1).repeat(2, 1, 1)  # [2, 6, 1]
    mask = torch.tensor([[True] * 6, [True, True, True, False, False, False]])
    out = segment_mean(x, mask, 3)  # [2, 3, 1]
    assert out[0, :, 0].tolist() == [0.5, 2.5, 4.5]
    assert out[1, :, 0].tolist() == [0.0, 1.0, 2.0]
    empty = segment_mean(x[:1], torch.zeros(1, 6, dtype=torch.bool), 2)
    assert empty.abs().sum() == 0
