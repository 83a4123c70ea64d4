import copy
import json

import pytest
import torch

from dcgan import layer_plan
from dcgan.archs.dcgan import Discriminator, Generator, init_weights


def models(size=16, channels=3):
    torch.manual_seed(0)
    return {"G": Generator(size, channels, 8, 8).apply(init_weights),
            "D": Discriminator(size, channels, 8).apply(init_weights)}


def inputs(batch=4, size=16, channels=3):
    return {"G": torch.zeros(batch, 8), "D": torch.zeros(batch, channels, size, size)}


def test_candidates_follow_auto_and_explicit_params():
    assert layer_plan.candidates({"precision": "auto", "channels_last": "auto"}, "fp32", True) == \
        ["fp32-nhwc", "fp32-nchw"]
    assert layer_plan.candidates({"precision": "auto", "channels_last": "auto"}, "bf16", True) == \
        ["bf16-nhwc", "bf16-nchw", "fp32-nhwc", "fp32-nchw"]
    # explicit params are kept for every conv: nothing to choose
    assert layer_plan.candidates({"precision": "bf16", "channels_last": False}, "bf16", False) == ["bf16-nchw"]
    assert layer_plan.candidates({"precision": "auto", "channels_last": True}, "fp32", True) == ["fp32-nhwc"]


def test_conv_inputs_names_every_conv_with_its_shape_and_changes_nothing():
    m = models()
    before = {k: v.clone() for k, v in m["D"].state_dict().items()}
    shapes = layer_plan.conv_inputs(m, inputs())
    assert shapes["G.net.0"] == (4, 8, 1, 1) and shapes["D.net.0"] == (4, 3, 16, 16)
    assert len([k for k in shapes if k.startswith("G.")]) == 3 and len([k for k in shapes if k.startswith("D.")]) == 3
    for k, v in m["D"].state_dict().items():
        assert torch.equal(v, before[k]), k


def test_choose_takes_the_fastest_only_past_the_margin():
    timings = {"a": {"fp32-nhwc": 1.0, "fp32-nchw": 0.5},      # clearly faster
               "b": {"fp32-nhwc": 1.0, "fp32-nchw": 0.99},     # within the timing noise: keep the uniform one
               "c": {"fp32-nhwc": 0.5, "fp32-nchw": 1.0}}
    assert layer_plan.choose(timings, "fp32-nhwc") == {"a": "fp32-nchw", "b": "fp32-nhwc", "c": "fp32-nhwc"}


def test_a_mixed_plan_computes_what_the_uniform_models_compute():
    m, ref = models(), models()
    for model in ref.values():
        model.to(memory_format=torch.channels_last)
    plan = {k: ("fp32-nchw" if i % 2 else "fp32-nhwc") for i, k in enumerate(layer_plan.conv_inputs(m, inputs()))}
    layer_plan.apply(m, plan)
    keys = set(ref["G"].state_dict())
    assert set(m["G"].state_dict()) == keys           # checkpoints and exports see the same modules
    for key, setting in plan.items():
        conv = m[key[0]].get_submodule(key[2:])
        assert isinstance(conv, layer_plan._Planned) and conv.layer_setting == setting
        assert conv.weight.is_contiguous(memory_format=torch.channels_last if setting.endswith("nhwc")
                                         else torch.contiguous_format)
    z = torch.randn(4, 8)
    fake, fake_ref = m["G"](z), ref["G"](z)
    torch.testing.assert_close(fake, fake_ref, rtol=1e-5, atol=1e-5)
    m["D"](fake).sum().backward()
    ref["D"](fake_ref).sum().backward()
    for (name, a), b in zip(m["G"].named_parameters(), ref["G"].parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)
    # deep copies (the EMA of G) keep the plan: classes, settings and weight layouts
    ema = copy.deepcopy(m["G"])
    for key, setting in plan.items():
        if key.startswith("G."):
            conv = ema.get_submodule(key[2:])
            assert isinstance(conv, layer_plan._Planned) and conv.layer_setting == setting
            assert conv.weight.stride() == m["G"].get_submodule(key[2:]).weight.stride()


def test_an_fp32_conv_leaves_the_bf16_autocast_region():
    m = models()
    keys = list(layer_plan.conv_inputs(m, inputs()))
    layer_plan.apply(m, {k: ("fp32-nhwc" if k == "D.net.0" else "bf16-nhwc") for k in keys})
    seen = {}
    for name in ("net.0", "net.2"):
        m["D"].get_submodule(name).register_forward_hook(lambda mod, a, out, n=name: seen.__setitem__(n, out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m["D"](torch.randn(4, 3, 16, 16))
    assert seen == {"net.0": torch.float32, "net.2": torch.bfloat16}


def test_plans_are_cached_per_machine_and_shape(tmp_path, monkeypatch):
    monkeypatch.setenv("DCGAN_CACHE_DIR", str(tmp_path))
    timed = []
    monkeypatch.setattr(layer_plan, "measure", lambda mods, shapes, settings: timed.append(shapes) or
                        {k: {"fp32-nhwc": 1.0, "fp32-nchw": 0.1 if k == "D.net.2" else 2.0} for k in shapes})
    settings = ["fp32-nhwc", "fp32-nchw"]
    lines = []
    plan = layer_plan.plan_for(models(), inputs(), settings, lines.append)
    assert plan["D.net.2"] == "fp32-nchw" and plan["G.net.0"] == "fp32-nhwc" and len(timed) == 1
    assert "timed 6 convs x 2 settings" in lines[0] and str(tmp_path) in lines[0]
    assert layer_plan.plan_for(models(), inputs(), settings, lines.append) == plan and len(timed) == 1
    layer_plan.plan_for(models(), inputs(batch=8), settings, lines.append)     # another shape: timed
    assert len(timed) == 2
    monkeypatch.setattr(layer_plan, "machine", lambda: "another CPU")        # another machine: timed
    layer_plan.plan_for(models(), inputs(), settings, lines.append)
    assert len(timed) == 3 and len(json.loads((tmp_path / "layer_plans.json").read_text())) == 18


def test_a_partial_cache_hit_times_only_the_new_convs_and_keeps_the_cached_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("DCGAN_CACHE_DIR", str(tmp_path))
    settings = ["fp32-nhwc", "fp32-nchw"]
    monkeypatch.setattr(layer_plan, "measure", lambda mods, shapes, s: {k: {"fp32-nhwc": 2.0, "fp32-nchw": 1.0}
                                                                      for k in shapes})
    first = layer_plan.plan_for(models(), inputs(), settings, print)
    assert set(first.values()) == {"fp32-nchw"}
    timed = []
    monkeypatch.setattr(layer_plan, "measure", lambda mods, shapes, s: timed.append(set(shapes)) or
                        {k: {"fp32-nhwc": 1.0, "fp32-nchw": 2.0} for k in shapes})
    wider = models()
    wider["D"] = Discriminator(16, 3, 16).apply(init_weights)          # another D: its convs are new
    plan = layer_plan.plan_for(wider, inputs(), settings, print)
    assert timed == [{"D.net.0", "D.net.2", "D.net.5"}]
    assert {k: v for k, v in plan.items() if k.startswith("G.")} == {k: v for k, v in first.items() if k.startswith("G.")}
    assert {v for k, v in plan.items() if k.startswith("D.")} == {"fp32-nhwc"}
    assert layer_plan.plan_for(models(), inputs(), settings, print) == first      # the first run's plan, unchanged


def test_one_candidate_times_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("DCGAN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(layer_plan, "measure", lambda *a: pytest.fail("timed with nothing to choose"))
    plan = layer_plan.plan_for(models(), inputs(), ["fp32-nchw"], print)
    assert set(plan.values()) == {"fp32-nchw"} and not (tmp_path / "layer_plans.json").exists()


def test_timing_measures_each_setting(monkeypatch):
    monkeypatch.setattr(layer_plan, "MIN_TIMED_S", 0.0)
    m = models()
    t = layer_plan.time_settings(m["D"].net[2], (4, 8, 8, 8), ["fp32-nhwc", "fp32-nchw"])
    assert set(t) == {"fp32-nhwc", "fp32-nchw"} and all(0 < s < 1 for s in t.values())


def test_an_unwritable_cache_is_one_line_and_the_plan_still_applies(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("DCGAN_CACHE_DIR", str(tmp_path / "file" / "cache"))
    monkeypatch.setattr(layer_plan, "measure", lambda mods, shapes, settings:
                        {k: {"fp32-nhwc": 1.0, "fp32-nchw": 2.0} for k in shapes})
    lines = []
    plan = layer_plan.plan_for(models(), inputs(), ["fp32-nhwc", "fp32-nchw"], lines.append)
    assert set(plan.values()) == {"fp32-nhwc"} and any("not cached" in line for line in lines)


def test_summary_names_the_exceptions():
    assert layer_plan.summary({}) == "no convs planned"      # a checkpoint made on a GPU
    assert layer_plan.summary({"G.net.0": "fp32-nhwc", "D.net.0": "fp32-nhwc", "D.net.2": "fp32-nchw"}) == \
        "2 convs fp32-nhwc, 1 fp32-nchw (D.net.2)"
