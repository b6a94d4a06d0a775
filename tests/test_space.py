"""Search spaces: YAML validation naming the key at fault, define-by-run sampling, baselines."""

import json

import optuna
import pytest

from autofuse.errors import ConfigError
from autofuse.space import baseline_params, describe, load_space, suggest_spec
from autofuse.spec import ArchitectureSpec

MODS = {"image": "image", "text": "text", "meta": "tabular"}


@pytest.mark.parametrize("name", ["fast", "default"])
def test_bundled_spaces_load(name):
    sp = load_space(name)
    d = describe(sp)
    assert "encoder_decoder" in d["fusion"]
    assert d["encoders"]["image"]


@pytest.mark.parametrize(
    "body,key",
    [
        ("fusion: {encoder_decoder: {nope: {}}}\nencoders: {}", "fusion.encoder_decoder.nope"),
        ("fusion: {encoder_decoder: {early: {points: [sideways]}}}\nencoders: {}",
         "fusion.encoder_decoder.early.points"),
        ("fusion: {encoder_decoder: {early: {params: {width: [1]}}}}\nencoders: {}",
         "fusion.encoder_decoder.early.params.width"),
        ("fusion: {encoder_decoder: {early: {}}}\nencoders: {image: [{name: image.nope}]}",
         "encoders.image[0].name"),
        ("fusion: {encoder_decoder: {early: {}}}\nencoders: {image: [{name: tabular.mlp}]}",
         "encoders.image[0].name"),
        ("fusion: {encoder_decoder: {early: {}}}\nencoders: {}\ntraining: {lr: {low: 0.1, high: 0.01}}",
         "training.lr"),
        ("fusion: {encoder_decoder: {early: {}}}\nencoders: {}\nbogus: 1", "bogus"),
        ("fusion: {encoder_decoder: {early: {}}}\nencoders: {}\nsampler: {name: annealing}", "sampler.name"),
    ],
)
def test_bad_space_names_the_key(tmp_path, body, key):
    p = tmp_path / "space.yaml"
    p.write_text(body)
    with pytest.raises(ConfigError) as e:
        load_space(p)
    assert key in str(e.value)


def test_unknown_bundled_space():
    with pytest.raises(ConfigError, match="no such file or bundled space"):
        load_space("does-not-exist")


def test_define_by_run_specs_round_trip():
    sp = load_space("fast")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_methods = set()
    for _ in range(12):
        trial = study.ask()
        spec = suggest_spec(trial, sp, MODS)
        again = ArchitectureSpec.model_validate(json.loads(spec.model_dump_json()))
        assert again == spec
        seen_methods.add(spec.fusion.method)
        # every parameter name is namespaced by its branch
        for k in trial.params:
            assert k in ("family", "head.fused_dim", "head.dropout") or k.startswith(
                ("encoder_decoder.", "enc.", "train."))
        study.tell(trial, 0.5)
    assert seen_methods == {"early", "decision"}


def test_baselines_are_enqueued_params():
    sp = load_space("fast")
    names = [n for n, _ in baseline_params(sp, MODS)]
    assert names == ["late_fusion", "early_concat"]
    study = optuna.create_study()
    for _, params in baseline_params(sp, MODS):
        study.enqueue_trial(params)
    t = study.ask()
    spec = suggest_spec(t, sp, MODS)
    assert (spec.fusion.method, spec.fusion.point) == ("decision", "late")
    assert spec.fusion.params["combine"] == "mean"
