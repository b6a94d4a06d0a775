"""image.timm: random init, local weights files, hub errors, other architectures."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from autofuse.encoders import EncoderSpec, create_encoder
from autofuse.errors import ConfigError


@pytest.fixture(scope="module")
def resnet18_state():
    import timm

    torch.manual_seed(123)
    return timm.create_model("resnet18", pretrained=False).state_dict()


def test_resnet18_random_init_shapes():
    enc = create_encoder(
        EncoderSpec(
            name="image.timm", mode="frozen", params={"model_name": "resnet18", "pretrained": False}
        ),
        {},
    )
    fs = enc.feature_shape
    # resnet18 on 64x64: stages 64x32², 64x16², 128x8², 256x4², 512x2²
    assert fs.dim == 512 and fs.n_tokens == 4
    assert fs.levels == ((4, 64), (4, 64), (4, 128), (4, 256), (4, 512))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("mode", ["frozen", "finetune"])
def test_local_weights_file(tmp_path, resnet18_state, suffix, mode):
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".pth":
        torch.save(resnet18_state, path)
    else:
        save_file({k: v.contiguous() for k, v in resnet18_state.items()}, str(path))
    enc = create_encoder(
        EncoderSpec(name="image.timm", mode=mode, params={"pretrained": str(path)}), {}
    )
    loaded = enc.backbone.state_dict()
    for k in (
        "conv1.weight",
        "layer1.0.conv1.weight",
        "layer4.1.conv2.weight",
        "layer4.1.bn2.running_var",
    ):
        assert torch.equal(loaded[k], resnet18_state[k]), k
    assert enc.frozen == (mode == "frozen")


def test_weights_identity_follows_file_content(tmp_path, resnet18_state):
    from autofuse.encoders.image import ImageTimm

    path = tmp_path / "w.pth"
    torch.save(resnet18_state, path)
    spec = EncoderSpec(name="image.timm", mode="frozen", params={"pretrained": str(path)})
    first = ImageTimm.weights_identity(spec)
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in resnet18_state.items()}, path)
    assert ImageTimm.weights_identity(spec) != first
    assert ImageTimm.weights_identity(EncoderSpec(name="image.timm", mode="frozen")) == {
        "pretrained": False
    }


def test_missing_weights_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        create_encoder(
            EncoderSpec(
                name="image.timm", mode="frozen", params={"pretrained": str(tmp_path / "nope.pth")}
            ),
            {},
        )


def test_scratch_ignores_pretrained(tmp_path, resnet18_state):
    path = tmp_path / "w.pth"
    torch.save(resnet18_state, path)
    enc = create_encoder(
        EncoderSpec(name="image.timm", mode="scratch", params={"pretrained": str(path)}), {}
    )
    assert not torch.equal(
        enc.backbone.state_dict()["conv1.weight"], resnet18_state["conv1.weight"]
    )


def test_other_architecture_and_token_grid():
    spec = EncoderSpec(
        name="image.timm",
        mode="scratch",
        dim=24,
        params={"model_name": "mobilenetv3_small_050", "token_grid": 2, "level_grid": 1},
    )
    enc = create_encoder(spec, {})
    x = torch.randint(0, 255, (3, 3, 64, 64), dtype=torch.uint8)
    f = enc(x, torch.tensor([True, False, True]))
    assert f.tokens.shape == (3, 4, 24) and enc.feature_shape.n_tokens == 4
    assert all(lv.shape[1] == 1 for lv in f.levels)
    assert f.pooled[1].abs().sum() == 0


def test_unknown_timm_model():
    with pytest.raises(ConfigError, match="timm has no model"):
        create_encoder(
            EncoderSpec(name="image.timm", mode="scratch", params={"model_name": "resnet_nope"}), {}
        )
