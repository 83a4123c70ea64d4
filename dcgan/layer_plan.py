"""Each convolution of G and D in the precision and memory layout that runs it fastest on this CPU.

On CUDA, `cudnn.benchmark` times algorithms per shape. oneDNN has nothing like it, and on CPUs the fastest
setting depends on the shape: on an AMX CPU bf16 runs D's 64->128 conv at 32x32 3x faster than fp32 but its
256->512 conv at 8x8 slower; on an AVX2 CPU (no native bf16) NCHW beats NHWC for some transposed convs and
loses for the rest. So before training each conv is timed, forward and backward, at the shape it will see,
in every candidate setting, and runs in the fastest from then on:

- precision: fp32, and bf16 where `precision` resolved to bf16 from `auto` (a CPU where oneDNN runs bf16
  natively); an explicit `precision` is kept for every conv;
- layout: NCHW and NHWC where `channels_last` is `auto`; an explicit value is kept.

A plan is cached per machine (CPU model, threads, torch version) and conv shape in
`~/.cache/dcgan/layer_plans.json` (`$DCGAN_CACHE_DIR`): the next run there pays no timing and uses the same
plan, and so computes the same numbers (a layout changes the order of sums: the last bits of the weights).
The checkpoint records the plan it trained with; a resume uses that plan.
"""
from __future__ import annotations

import copy
import json
import os
import platform
import time
from pathlib import Path

import torch
from torch import nn

from .files import atomic_write_text

MARGIN = 0.03        # another setting replaces the uniform one only when this much faster (timing noise)
WARMUP, REPS, MIN_TIMED_S = 2, 5, 0.05


class _Planned:
    """Mixin of the planned convs: the input in the conv's layout; fp32 convs leave a bf16 autocast region.
    The class changes, not the module's structure: state_dict keys, checkpoints and exports stay as they were."""
    layer_setting = "fp32-nhwc"

    def forward(self, x, *args, **kwargs):
        x = x.contiguous(memory_format=_layout(self.layer_setting))
        if self.layer_setting.startswith("fp32") and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float(), *args, **kwargs)
        return super().forward(x, *args, **kwargs)


class PlannedConv2d(_Planned, nn.Conv2d):
    pass


class PlannedConvTranspose2d(_Planned, nn.ConvTranspose2d):
    pass


PLANNED = {nn.Conv2d: PlannedConv2d, nn.ConvTranspose2d: PlannedConvTranspose2d}


def candidates(p: dict, precision: str, channels_last: bool) -> list[str]:
    """The settings to time for params `p` whose fast path resolved to (precision, channels_last); the first is
    that uniform fast path (what every conv ran before plans)."""
    precisions = [precision] + (["fp32"] if precision == "bf16" and p.get("precision") == "auto" else [])
    layouts = ["nhwc", "nchw"] if channels_last else ["nchw", "nhwc"]
    if p.get("channels_last", "auto") != "auto":
        layouts = layouts[:1]
    return [f"{p_}-{lay}" for p_ in precisions for lay in layouts]


def base_class(m: nn.Module) -> type:
    return next(b for b in PLANNED if isinstance(m, b))


def modules_by_key(models: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """Every module of the models under the key plans use: {"G.net.0": ..., "D.net.2": ...}."""
    return {f"{prefix}.{name}": m for prefix, model in models.items() for name, m in model.named_modules()}


def conv_inputs(models: dict[str, nn.Module], inputs: dict[str, torch.Tensor]) -> dict[str, tuple]:
    """{"G.net.0": input shape, ...}: each plannable conv (not spectral-normed) and the shape it sees, from one
    forward pass of each model in eval mode (nothing of the model changes)."""
    from .sampling import eval_mode

    shapes, hooks = {}, []
    for key, m in modules_by_key(models).items():
        if type(m) in PLANNED or isinstance(m, _Planned):
            def record(mod, args, out, key=key):
                shapes[key] = tuple(args[0].shape)
            hooks.append(m.register_forward_hook(record))
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            for prefix, model in models.items():
                with eval_mode(model):
                    model(inputs[prefix])
    finally:
        for h in hooks:
            h.remove()
    return shapes


def _layout(setting: str) -> torch.memory_format:
    return torch.channels_last if setting.endswith("nhwc") else torch.contiguous_format


def _runner(conv: nn.Module, shape: tuple, setting: str, around: str):
    """A function running one forward + backward (input and weight gradients) of a copy of `conv` in `setting`,
    its input arriving and its output leaving in the layout of `around` (its neighbours'): a layout that
    differs from theirs pays for the two conversions, forward and backward."""
    fmt = _layout(setting)
    m = copy.deepcopy(conv).to(memory_format=fmt)
    m.__class__ = base_class(m)
    with torch.random.fork_rng(devices=[]):
        x = torch.randn(shape).contiguous(memory_format=_layout(around)).requires_grad_()
    bf16 = torch.autocast("cpu", dtype=torch.bfloat16, enabled=setting.startswith("bf16"))

    def run():
        with bf16:
            y = m(x.contiguous(memory_format=fmt)).contiguous(memory_format=_layout(around))
        y.backward(torch.ones_like(y))
    return run


def time_settings(conv: nn.Module, shape: tuple, settings: list[str]) -> dict[str, float]:
    """{setting: seconds} of one forward + backward of `conv` at `shape`: the fastest of REPS runs (at least
    MIN_TIMED_S in all), the settings taking turns, so that a burst of other work slows them alike."""
    runs = {s: _runner(conv, shape, s, settings[0]) for s in settings}
    for run in runs.values():
        for _ in range(WARMUP):     # oneDNN builds its kernels on the first calls
            run()
    times: dict[str, list[float]] = {s: [] for s in settings}
    while min(len(t) for t in times.values()) < REPS or sum(map(sum, times.values())) < MIN_TIMED_S * len(settings):
        for s, run in runs.items():
            t0 = time.perf_counter()
            run()
            times[s].append(time.perf_counter() - t0)
        if len(times[settings[0]]) >= 20 * REPS:
            break
    return {s: min(t) for s, t in times.items()}


def measure(models: dict[str, nn.Module], shapes: dict[str, tuple], settings: list[str]) -> dict[str, dict]:
    """{conv: {setting: seconds}} for every conv and setting."""
    convs = modules_by_key(models)
    return {key: time_settings(convs[key], shape, settings) for key, shape in shapes.items()}


def choose(timings: dict[str, dict], uniform: str) -> dict[str, str]:
    """The fastest setting of each conv; the uniform one unless another is MARGIN faster."""
    plan = {}
    for key, t in timings.items():
        best = min(t, key=t.get)
        plan[key] = best if t[best] < t[uniform] * (1 - MARGIN) else uniform
    return plan


def apply(models: dict[str, nn.Module], plan: dict[str, str]):
    """Each conv named in the plan runs in its setting: its class becomes the planned one and its weight
    takes the layout (before the optimiser is built: Adam's state follows the weights' layout)."""
    for key, m in modules_by_key(models).items():
        setting = plan.get(key)
        if setting is None:
            continue
        if type(m) in PLANNED:
            m.__class__ = PLANNED[type(m)]
        m.layer_setting = setting
        m.weight.data = m.weight.data.contiguous(memory_format=_layout(setting))


def cache_path() -> Path:
    return Path(os.environ.get("DCGAN_CACHE_DIR") or Path.home() / ".cache" / "dcgan") / "layer_plans.json"


def machine() -> str:
    """What a plan depends on besides the shapes."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu} | {torch.get_num_threads()} threads | torch {torch.__version__}"


def plan_for(models: dict[str, nn.Module], inputs: dict[str, torch.Tensor], settings: list[str],
             log=print) -> dict[str, str]:
    """The plan of these models at these inputs: from the cache, else measured (and then cached)."""
    shapes = conv_inputs(models, inputs)
    if len(settings) < 2 or not shapes:
        return {key: settings[0] for key in shapes}
    convs = modules_by_key(models)
    keys = {key: json.dumps([machine(), settings, base_class(convs[key]).__name__, convs[key].extra_repr(), shape])
            for key, shape in shapes.items()}
    cache = _read_cache()
    missing = {key: shape for key, shape in shapes.items() if keys[key] not in cache}
    if missing:   # time only what no run here has timed: a cached conv keeps its setting (and its numbers)
        t0 = time.perf_counter()
        chosen = choose(measure(models, missing, settings), settings[0])
        log(f"layer plan: timed {len(missing)} convs x {len(settings)} settings in {time.perf_counter() - t0:.1f} s; "
            f"cached in {cache_path()}")
        cache = _add_to_cache({keys[key]: setting for key, setting in chosen.items()}, log)
    return {key: cache[k] for key, k in keys.items()}


def _read_cache() -> dict:
    try:
        return json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}


def _add_to_cache(entries: dict[str, str], log) -> dict:
    """The cache with `entries` added where absent (a run that timed the same conv meanwhile wins: its plan is
    the one later runs will use), re-read just before writing so that concurrent runs keep each other's."""
    cache = _read_cache()
    for k, setting in entries.items():
        cache.setdefault(k, setting)
    try:
        cache_path().parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache_path(), json.dumps(cache, indent=1) + "\n")
    except OSError as e:
        log(f"layer plan not cached ({e}): the next run times the convs again")
    return cache


def summary(plan: dict[str, str]) -> str:
    """'8 convs fp32-nhwc, 2 fp32-nchw (G.net.9, G.net.12)'; 'no convs planned' for an empty plan."""
    if not plan:
        return "no convs planned"
    counts: dict[str, list[str]] = {}
    for key, setting in plan.items():
        counts.setdefault(setting, []).append(key)
    common = max(counts, key=lambda s: len(counts[s]))
    rest = [f"{len(v)} {s} ({', '.join(v)})" for s, v in counts.items() if s != common]
    return ", ".join([f"{len(counts[common])} convs {common}"] + rest)
