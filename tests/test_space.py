"""Search spaces: YAML validation naming the key at fault, define-by-run sampling, baselines."""

import json

import optuna
import pytest

from autofuse.errors import ConfigError
from autofuse.space import baseline_params, describe, load_space, suggest_spec
from autofuse.spec import ArchitectureSpec

MODS = {"image": "image", "text": "text", "meta": "tabular"}


FAMILIES = ("encoder_decoder", "attention", "graph", "generative", "constraint")


@pytest.mark.parametrize("name", ["fast", "default", "demo", *FAMILIES])
def test_bundled_spaces_load(name):
    sp = load_space(name)
    d = describe(sp)
    assert d["encoders"]["image"]
    if name in FAMILIES:
        assert list(d["fusion"]) == [name]
    else:
        assert set(d["fusion"]) == set(FAMILIES)


def test_fast_space_uses_frozen_encoders_where_they_exist():
    d = describe(load_space("fast"))
    for mtype in ("image", "audio", "text"):
        assert all(c["modes"] == ["frozen"] for c in d["encoders"][mtype]), mtype


def test_extends_replaces_top_level_keys(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text(
        "extends: default\nname: mine\nfusion: {graph: {modality_graph: {params: {conv: [gat]}}}}\n"
    )
    d = describe(load_space(p))
    assert d["name"] == "mine" and list(d["fusion"]) == ["graph"]
    assert d["fusion"]["graph"]["modality_graph"]["params"]["conv"] == ["gat"]
    assert d["encoders"] == describe(load_space("default"))["encoders"]
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\nfusion: {}\n")
    with pytest.raises(ConfigError, match="extends"):
        load_space(tmp_path / "loop.yaml")


@pytest.mark.parametrize(
    "body,key",
    [
        ("fusion: {encoder_decoder: {nope: {}}}\nencoders: {}", "fusion.encoder_decoder.nope"),
        (
            "fusion: {encoder_decoder: {early: {points: [sideways]}}}\nencoders: {}",
            "fusion.encoder_decoder.early.points",
        ),
        (
            "fusion: {encoder_decoder: {early: {params: {width: [1]}}}}\nencoders: {}",
            "fusion.encoder_decoder.early.params.width",
        ),
        (
            "fusion: {encoder_decoder: {early: {}}}\nencoders: {image: [{name: image.nope}]}",
            "encoders.image[0].name",
        ),
        (
            "fusion: {encoder_decoder: {early: {}}}\nencoders: {image: [{name: tabular.mlp}]}",
            "encoders.image[0].name",
        ),
        (
            "fusion: {encoder_decoder: {early: {}}}\nencoders: {}\ntraining: {lr: {low: 0.1, high: 0.01}}",
            "training.lr",
        ),
        ("fusion: {encoder_decoder: {early: {}}}\nencoders: {}\nbogus: 1", "bogus"),
        (
            "fusion: {encoder_decoder: {early: {}}}\nencoders: {}\nsampler: {name: annealing}",
            "sampler.name",
        ),
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
    sp = load_space("default")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_methods = set()
    for _ in range(60):
        trial = study.ask()
        spec = suggest_spec(trial, sp, MODS)
        again = ArchitectureSpec.model_validate(json.loads(spec.model_dump_json()))
        assert again == spec
        seen_methods.add(spec.fusion.name)
        assert (
            spec.fusion.point
            in describe(sp)["fusion"][spec.fusion.family][spec.fusion.method]["points"]
        )
        # every parameter name is namespaced by its branch
        for k in trial.params:
            assert k in ("family", "head.fused_dim", "head.dropout") or k.startswith(
                (
                    f"{spec.fusion.family}.{spec.fusion.method}.",
                    f"{spec.fusion.family}.method",
                    "enc.",
                    "train.",
                )
            )
        # the auxiliary-loss weight is only tuned where there is an auxiliary loss
        has_aux = spec.fusion.family in ("generative", "constraint") and spec.fusion.method not in (
            "tensor",
            "low_rank_tensor",
        )
        assert (f"{spec.fusion.name}.aux_weight" in trial.params) == has_aux
        study.tell(trial, 0.5)
    assert len(seen_methods) >= 12


def test_baselines_are_enqueued_params():
    sp = load_space("fast")
    names = [n for n, _ in baseline_params(sp, MODS)]
    assert names == [
        "late_fusion",
        "early_concat",
        "tensor_fusion",
        "low_rank_tensor",
        "cross_attention",
    ]
    seven = {f"t{i}": "tabular" for i in range(7)}
    assert "tensor_fusion" not in [n for n, _ in baseline_params(sp, seven)]  # capped at 6
    study = optuna.create_study()
    for _, params in baseline_params(sp, MODS):
        study.enqueue_trial(params)
    t = study.ask()
    spec = suggest_spec(t, sp, MODS)
    assert (spec.fusion.method, spec.fusion.point) == ("decision", "late")
    assert spec.fusion.params["combine"] == "mean"


def test_coverage_enqueues_each_family_up_to_the_minimum():
    from autofuse.space import coverage_params

    sp = load_space("default")
    mods = {"a": "image", "b": "audio"}
    baselines = [p for _, p in baseline_params(sp, mods)]
    extra = coverage_params(sp, mods, baselines, budget=100)
    counts = {}
    for p in baselines + extra:
        counts[p["family"]] = counts.get(p["family"], 0) + 1
    assert counts == {f: 2 for f in FAMILIES}
    assert coverage_params(sp, mods, baselines + extra, budget=100) == []  # idempotent
    assert len(coverage_params(sp, mods, baselines, budget=2)) == 2  # never beyond the budget
