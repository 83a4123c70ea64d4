"""Each fact in one place: params.yaml, docs/params.md and dvc.yaml's params:/deps: lists are what the
declarations give (dcgan/params.py, the stage scripts' imports), and the declaration itself is sound."""
import pytest
import yaml

from conftest import ROOT
from dcgan import declared, params

DVC_STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("path", [declared.PARAMS_YAML, declared.REFERENCE, declared.DVC_YAML])
def test_derived_file_is_what_the_declarations_give(path):
    """params.yaml: its keys, their order and their comments (the values are the user's); the others: all."""
    assert not declared.differs(path, declared.expected()[path]), (
        f"{path} differs from the declarations: run `python -m dcgan.declared --write` (change defaults, help "
        "and stages in dcgan/params.py, not in the derived files)")


def test_params_yaml_keeps_its_values_and_fixes_only_the_layout():
    text = declared.params_yaml({"epochs": 7, "source": "/data/faces"})
    assert "epochs: 7 " in text and "source: /data/faces " in text
    assert declared.params_yaml_layout(text) == declared.params_yaml_layout(declared.params_yaml())
    moved = text.replace("# total epochs", "# epochs in all")
    assert declared.params_yaml_layout(moved) != declared.params_yaml_layout(text)   # a stale help is noticed
    dvc_style = text.replace("epochs: 7 ", "epochs: 9")                              # -S rewrites in place
    assert declared.params_yaml_layout(dvc_style) == declared.params_yaml_layout(text)


def test_params_yaml_in_the_working_tree_has_every_declared_key_and_valid_values():
    data = params.read(ROOT / "params.yaml")
    assert list(data) == list(params.SCHEMA)
    for stage in params.STAGES:
        params.validate(data, params.STAGE_KEYS[stage], "params.yaml")


@pytest.mark.parametrize("stage", sorted(DVC_STAGES))
def test_dvc_yaml_params_and_code_deps_of_each_stage(stage):
    spec = DVC_STAGES[stage]
    assert spec.get("params", []) == params.STAGE_KEYS.get(stage, []), f"dvc.yaml stage '{stage}' params"
    code = [d for d in spec["deps"] if d.endswith(".py")]
    assert code == declared.stage_code(spec["cmd"]), f"dvc.yaml stage '{stage}' deps"


def test_every_declared_param_is_read_by_a_stage_and_its_default_is_valid():
    for key, p in params.SCHEMA.items():
        assert p.stages and set(p.stages) <= set(params.STAGES), key
        assert params.validate(params.defaults(), [key])[key] == p.default, key


def test_weight_keys_are_the_train_params_that_change_the_weights():
    train = params.STAGE_KEYS["train"]
    assert set(params.WEIGHT_KEYS) == {k for k in train if params.SCHEMA[k].changes_weights}
    assert {"arch", "loss", "diffaugment", "lr_g", "seed", "nz"} <= set(params.WEIGHT_KEYS)
    assert not {"epochs", "device", "eval_every", "sample_every", "checkpoint_every"} & set(params.WEIGHT_KEYS)


def test_names_of_registered_parts_are_the_allowed_values():
    from dcgan import archs, augment, losses
    base = params.defaults()
    for key, registry in (("loss", losses.REGISTRY), ("arch", archs.REGISTRY)):
        for name in registry.names():
            assert params.validate({**base, key: name}, [key])[key] == name
        with pytest.raises(params.ParamError, match=f"'{key}' has an unknown {registry.family} 'nope' \\(choose from"):
            params.validate({**base, key: "nope"}, [key])
    policy = ",".join(augment.REGISTRY.names())
    assert params.validate({**base, "diffaugment": policy}, ["diffaugment"])["diffaugment"] == policy
    assert "`hinge`" in declared.reference() and "`translation`" in declared.reference()


def test_check_mode_names_a_stale_file(tmp_path, monkeypatch, capsys):
    for path in (declared.PARAMS_YAML, declared.REFERENCE, declared.DVC_YAML):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text((ROOT / path).read_text())
    (tmp_path / "docs/params.md").write_text("stale\n")
    monkeypatch.setattr(declared, "ROOT", tmp_path)
    assert declared.main(["--check"]) == 1
    assert "docs/params.md differs" in capsys.readouterr().err
    assert declared.main(["--write"]) == 0 and declared.main(["--check"]) == 0
    assert (tmp_path / "docs/params.md").read_text() == declared.reference()
