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


# ---- values no trial could train with ------------------------------------------------------------

_BASE = "fusion: {encoder_decoder: {early: {}}}\nencoders: {tabular: [{name: tabular.mlp}]}\n"


@pytest.mark.parametrize(
    "body,path,why",
    [
        ("training: {epochs: 0}", "training.epochs", "at least 1 epoch"),
        ("training: {epochs: {low: 0, high: 4}}", "training.epochs.low", "at least 1 epoch"),
        ("training: {epochs: {low: 1.0, high: 3.5}}", "training.epochs.high", "whole number"),
        ("training: {batch_size: [0]}", "training.batch_size[0]", "at least 1"),
        ("training: {batch_size: [32, -8]}", "training.batch_size[1]", "at least 1"),
        ("training: {batch_size: [32.5]}", "training.batch_size[0]", "whole number"),
        ("training: {batch_size: []}", "training.batch_size", "empty list"),
        ("training: {lr: 0}", "training.lr", "greater than 0"),
        ("training: {lr: -0.001}", "training.lr", "greater than 0"),
        ("training: {lr: [0.01, fast]}", "training.lr[1]", "'fast' is not a number"),
        ("training: {lr: .nan}", "training.lr", "not a finite number"),
        ("training: {lr: {low: .inf, high: 1}}", "training.lr.low", "finite"),
        ("training: {lr: {low: 0.1, high: 0.01}}", "training.lr", "greater than high"),
        ("training: {lr: {low: 0.001, high: 0.1, step: 0}}", "training.lr", "step"),
        ("training: {lr: }", "training.lr", "no value given"),
        ("training: {weight_decay: -1}", "training.weight_decay", "0 or more"),
        ("training: {patience: -1}", "training.patience", "at least 1"),
        ("training: {patience: 0}", "training.patience", "at least 1"),
        ("training: {modality_dropout: 1.0}", "training.modality_dropout", "[0, 1)"),
        ("training: {head_dropout: [0.1, 1.5]}", "training.head_dropout[1]", "[0, 1)"),
        ("training: {fused_dim: [0]}", "training.fused_dim[0]", "at least 1"),
        ("training: {aux_weight: -0.5}", "training.aux_weight", "0 or more"),
        (
            "fusion: {encoder_decoder: {early: {params: {hidden: []}}}}",
            "fusion.encoder_decoder.early.params.hidden",
            "empty list",
        ),
        (
            "fusion: {encoder_decoder: {early: {params: {hidden: [64, 0]}}}}",
            "fusion.encoder_decoder.early.params.hidden[1]",
            "at least 1",
        ),
        (
            "fusion: {encoder_decoder: {early: {params: {depth: {low: 3, high: 1}}}}}",
            "fusion.encoder_decoder.early.params.depth",
            "greater than high",
        ),
        (
            "fusion: {encoder_decoder: {early: {params: {depth: {low: 1.5, high: 3}}}}}",
            "fusion.encoder_decoder.early.params.depth.low",
            "whole number",
        ),
        (
            "fusion: {encoder_decoder: {early: {params: {dropout: [1.5]}}}}",
            "fusion.encoder_decoder.early.params.dropout[0]",
            "[0, 1)",
        ),
        (
            "fusion: {encoder_decoder: {early: {points: []}}}",
            "fusion.encoder_decoder.early.points",
            "empty list",
        ),
        (
            "fusion: {graph: {modality_graph: {params: {conv: [gcn, gin]}}}}",
            "fusion.graph.modality_graph.params.conv",
            "['gin'] not implemented",
        ),
        (
            "fusion: {constraint: {coordinated: {params: {temperature: -0.1}}}}",
            "fusion.constraint.coordinated.params.temperature",
            "greater than 0",
        ),
        ("encoders: {tabular: []}", "encoders.tabular", "empty list of encoders"),
        (
            "encoders: {tabular: [{name: tabular.mlp, modes: []}]}",
            "encoders.tabular[0].modes",
            "empty list",
        ),
        (
            "encoders: {tabular: [{name: tabular.mlp, params: {dim: [0]}}]}",
            "encoders.tabular[0].params.dim[0]",
            "at least 1",
        ),
        (
            "encoders: {tabular: [{name: tabular.mlp, params: {hidden: []}}]}",
            "encoders.tabular[0].params.hidden",
            "empty list",
        ),
        ("trials: 0", "trials", "greater than or equal to 1"),
        ("sampler: {n_startup_trials: -1}", "sampler.n_startup_trials", ""),
        ("pruner: {n_warmup_steps: -2}", "pruner.n_warmup_steps", ""),
        ("stages: {budget: {unimodal: 0, fusion: 0, finalists: 0}}", "stages.budget", "all 0"),
    ],
)
def test_values_that_cannot_train_are_refused_with_their_path(tmp_path, body, path, why):
    top = body.split(":")[0]
    rest = {
        "fusion": "encoders: {tabular: [{name: tabular.mlp}]}\n",
        "encoders": "fusion: {encoder_decoder: {early: {}}}\n",
    }.get(top, _BASE)
    p = tmp_path / "x.yaml"
    p.write_text(rest + body + "\n")
    with pytest.raises(ConfigError) as e:
        load_space(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: {path}:") or msg.startswith(f"{p}: {path}"), msg
    assert f"{path}:" in msg and why in msg, msg
    assert "\n" not in msg


def test_valid_values_are_accepted_and_numbers_written_as_text_are_read(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text(
        _BASE + "training: {lr: 1e-3, weight_decay: {low: 0, high: 1}, batch_size: [1, 32.0], "
        "epochs: 1, patience: 1, head_dropout: [0.0, 0.5]}\n"
    )
    t = describe(load_space(p))["training"]
    assert t["lr"] == 0.001  # YAML reads 1e-3 as text
    assert t["weight_decay"]["low"] == 0.0 and isinstance(t["weight_decay"]["low"], float)
    assert t["batch_size"] == [1, 32] and all(isinstance(b, int) for b in t["batch_size"])


def test_the_checker_also_guards_spaces_built_in_code():
    """A space stored with a study (``autofuse worker``) or built as a dict is checked too."""
    from pydantic import ValidationError

    from autofuse.space import SearchSpace

    raw = {"fusion": {"encoder_decoder": {"early": None}}, "encoders": {}}
    SearchSpace.model_validate(raw)
    with pytest.raises(ValidationError, match="at least 1"):
        SearchSpace.model_validate({**raw, "training": {"batch_size": [0]}})


def test_yaml_errors_are_one_line_with_the_position(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text(_BASE + "training: {epochs: [1, 2\n")
    with pytest.raises(ConfigError) as e:
        load_space(p)
    assert (
        "\n" not in str(e.value) and "line 4" in str(e.value) and "not valid YAML" in str(e.value)
    )


def test_method_choices_capped_by_the_modality_count_keep_one_set_per_name():
    """Stage 2's modality subset changes the number of modalities from trial to trial; a method
    capped below it (tensor fusion: 6) drops out of its family's choices, and Optuna would fail
    the trial ("CategoricalDistribution does not support dynamic value space") if the smaller
    set reused the name."""
    import optuna

    from autofuse.space import _suggest_fusion, choice_names

    sp = load_space("default")
    assert choice_names(sp, 3) == ("family", {f: f"{f}.method" for f in sp.methods()})
    fam, methods = choice_names(sp, 8)
    assert fam == "family" and methods["constraint"] != "constraint.method"
    st = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=2))
    seen = set()
    for i in range(10):
        st.enqueue_trial({"family": "constraint"})
        t = st.ask()
        fusion, _ = _suggest_fusion(t, sp, 8 if i % 2 else 3)  # raised on the old names
        assert fusion.family == "constraint"
        if i % 2:
            assert fusion.method != "tensor"
        seen.add(fusion.method)
        st.tell(t, float(i))
    assert len(seen) >= 2
