"""The checkpoint fingerprint: every param declared to change the weights is in it, nothing else is."""
import numpy as np
import pytest

from dcgan import checkpoint, params

ARRAYS = (np.zeros((4, 1, 32, 32), np.uint8), np.zeros((2, 1, 32, 32), np.uint8))


def other_value(key):
    """A valid value of `key` other than its default."""
    p = params.SCHEMA[key]
    for v in (True, False, "auto", "fp32", "hinge", "color", 7, 0.3, 0.001, 1, 2.0, 0):
        if v != p.default and (isinstance(v, bool) == isinstance(p.default, bool)):
            try:
                return params.validate({**params.defaults(), key: v}, [key])[key]
            except params.ParamError:
                continue
    assert isinstance(p.default, str), key
    return p.default + "_other"   # e.g. `arch` while one architecture is registered: the fingerprint does not validate


@pytest.mark.parametrize("key", params.STAGE_KEYS["train"])
def test_a_train_param_is_in_the_fingerprint_exactly_when_it_changes_the_weights(key):
    p = params.validate(params.defaults(), params.STAGE_KEYS["train"])
    before = checkpoint.fingerprint(p, *ARRAYS)
    after = checkpoint.fingerprint({**p, key: other_value(key)}, *ARRAYS)
    if params.SCHEMA[key].changes_weights:
        changed = checkpoint._what_changed(before, after)
        assert changed and key in changed[0], f"{key} changes the weights but not the fingerprint"
    else:
        assert before == after, f"{key} does not change the weights, yet a change would retrain"


def test_resolved_fast_path_is_recorded_in_place_of_auto():
    p = params.validate(params.defaults(), params.STAGE_KEYS["train"])
    fp = checkpoint.fingerprint(p, *ARRAYS, {"precision": "bf16", "channels_last": True, "compile": False,
                                             "cuda_graph": True})
    assert (fp["precision"], fp["channels_last"], fp["compile"]) == ("bf16", True, False) and "cuda_graph" not in fp
