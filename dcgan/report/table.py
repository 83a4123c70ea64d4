"""The experiments table: the params that differ between the experiments shown, then their scores.

The score columns come from the metrics registry (each metric's headline keys of metrics/eval.json, and
whether lower is better), so a new metric shows up here without a change to this file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .. import evaluation, metrics
from .. import params as P

if TYPE_CHECKING:
    from .collect import Experiment

# from metrics/train.json: the in-training best score and the end of training; whether lower is better
TRAIN_COLUMNS = [
    ("best_swd", True, "the best in-training SWD (val split), with best_by: swd"),
    ("best_rkid", True, "the best in-training rkid (val split), with best_by: rkid"),
    ("best_c2st", True, "the best in-training c2st (val split), with best_by: c2st"),
    ("d_train", None, "D's mean output on training images at the end"),
    ("d_val", None, "D's mean output on val images at the end: far below d_train = D memorised the training set"),
    ("images_seen", None, "images the training stepped through"),
    ("epochs_done", None, "epochs trained"),
    ("wall_s", None, "seconds of training"),
    ("device", None, "where it trained"),
]
EXTRA_EVAL = ("kid_floor", "memorisation_ratio")   # beside the headline keys: KID's floor, memorisation in one number


@dataclass
class Column:
    key: str
    label: str
    group: str                          # param | eval | train
    value: Callable[[Experiment], object]
    lower_is_better: bool | None        # None: not ranked (floors, params, counts)
    help: str = ""


def eval_keys() -> list[tuple[str, bool | None]]:
    """metrics/eval.json's headline keys in evaluation order, with their metric's direction (floors: None)."""
    out = []
    for m in metrics.in_order():
        for key in (*m.headline, *(k for k in EXTRA_EVAL if m.describe(k))):
            out.append((key, None if key.endswith("_floor") or key.startswith("n_") else m.lower_is_better))
    return out


def columns(exps: list[Experiment]) -> list[Column]:
    """The params whose values differ between `exps` (in params.yaml's order), then every score that at least
    one of them has."""
    cols = []
    keys = [k for k in P.SCHEMA] + sorted({k for e in exps for k in e.params} - set(P.SCHEMA))
    for k in keys:
        values = {repr(e.params.get(k)) for e in exps}
        if len(values) > 1:
            cols.append(Column(k, k, "param", lambda e, k=k: e.params.get(k), None,
                               P.SCHEMA[k].help if k in P.SCHEMA else ""))
    for key, lower in eval_keys():
        cols.append(Column("eval." + key, key, "eval", lambda e, k=key: e.metrics.get("eval", {}).get(k), lower,
                           evaluation.key_help(key)))
    for key, lower, help_ in TRAIN_COLUMNS:
        cols.append(Column("train." + key, key, "train", lambda e, k=key: e.metrics.get("train", {}).get(k),
                           lower, help_))
    return [c for c in cols if c.group == "param" or any(_present(c.value(e)) for e in exps)]


def _present(v) -> bool:
    return v is not None and not (isinstance(v, float) and not math.isfinite(v))


def best(column: Column, exps: list[Experiment]) -> set[str]:
    """Ids of the experiments with the best value of a ranked column (ties all marked)."""
    if column.lower_is_better is None:
        return set()
    values = {e.id: v for e in exps if isinstance(v := column.value(e), (int, float)) and _present(v)
              and not isinstance(v, bool)}
    if len(set(values.values())) < 2:      # one value, or all equal: nothing to tell apart
        return set()
    target = (min if column.lower_is_better else max)(values.values())
    return {i for i, v in values.items() if v == target}
