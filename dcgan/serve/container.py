"""`python -m dcgan.serve.container` (`make image`): an OCI image of the server with one model version baked in.

  python -m dcgan.serve.container                                # the registry's prod generator + its encoder
  python -m dcgan.serve.container --model generator@v0.1.0       # a version; tagged dcgan-serve:v0.1.0
  python -m dcgan.serve.container --model models/published/generator.pt --encoder models/encoder.pt
  python -m dcgan.serve.container --base python:3.11-slim        # from a public image where a registry is reachable

The models are resolved as the server resolves them (dcgan.serve.registry: a file, name@version, or a name
with --stage, and the encoder registered with the generator), exported to ONNX here when they are .pt files,
and copied into a build context with deploy/Containerfile, the dcgan package and the server's wheels:
deploy/requirements.txt's packages and their dependencies, at requirements.lock's versions and hashes,
downloaded by pip on this machine (the build itself needs no index: machines that reach no registry or
index from inside a build still build). The default base, localhost/dcgan-base:bookworm, is made here with
mmdebstrap when missing (Debian 12 minbase + python3 + libstdc++6): no image registry is needed at all.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .. import cli
from ..errors import UserError
from ..shapes import encoder_misfit
from . import registry

ROOT = Path(__file__).resolve().parents[2]
CONTAINERFILE = ROOT / "deploy" / "Containerfile"
REQUIREMENTS = ROOT / "deploy" / "requirements.txt"
LOCK = ROOT / "requirements.lock"
LOCAL_BASE = "localhost/dcgan-base:bookworm"
NAME = "dcgan-serve"
PYTHON = "3.11"   # the base's CPython: Debian 12's python3, python:3.11-slim
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_5_x86_64",
             "manylinux1_x86_64")
WHEEL_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dcgan-image" / "wheels"
# podman on machines with hybrid cgroups: crun fails there (so runc where installed), and setting RLIMIT_NOFILE
# needs explicit values; harmless elsewhere (docs/deploy.md)
PODMAN_FLAGS = ("--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096")


def engine_command(engine: str | None = None) -> list[str]:
    """podman (with runc where it is installed), else docker; UserError when neither is."""
    for name in ([engine] if engine else ["podman", "docker"]):
        if shutil.which(name):
            if name != "podman":
                return [name]
            return [name, *(("--runtime", "runc") if shutil.which("runc") else ())]
    raise UserError(f"{engine or 'podman or docker'} is not installed: `apt-get install podman runc` "
                    "(or install docker) to build the image")


def run(cmd: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        last = (r.stderr.strip() or r.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise UserError(f"{what} failed (exit {r.returncode}): {last[0][:300]}")
    return r


def ensure_base(base: str, engine: list[str]) -> None:
    """The local Debian base, made with mmdebstrap when missing (~100 s); other bases are the engine's to pull."""
    if base != LOCAL_BASE or subprocess.run([*engine, "image", "inspect", base], capture_output=True).returncode == 0:
        return
    if not shutil.which("mmdebstrap"):
        raise UserError(f"base image {base} is missing and mmdebstrap is not installed: `apt-get install mmdebstrap`, "
                        "or build from a public image: make image BASE=python:3.11-slim")
    with tempfile.TemporaryDirectory() as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        print(f"making the base image {base} with mmdebstrap (Debian 12 minbase + python3, ~2 min)", flush=True)
        run(["mmdebstrap", "--variant=minbase", "--include=python3,ca-certificates,libstdc++6",
             "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/man/*",
             "--dpkgopt=path-exclude=/usr/share/locale/*", "bookworm", str(rootfs)], "mmdebstrap")
        run([*engine, "import", str(rootfs), base], "importing the base image")


def _names(text: str) -> list[tuple[str, bool]]:
    """deploy/requirements.txt -> [(name, with its dependencies?)]."""
    out = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if words:
            out.append((words[0].lower(), "nodeps" not in words[1:]))
    return out


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(requested: list[tuple[str, bool]]) -> dict[str, str]:
    """{package: version} of the requested packages and what they require (no extras), as installed here."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement

    env = {"python_version": PYTHON, "python_full_version": PYTHON + ".0", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
           "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}
    found: dict[str, str] = {}
    todo = list(requested)
    while todo:
        name, deps = todo.pop()
        key = _canonical(name)
        if key in found:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            raise UserError(f"{name} (deploy/requirements.txt) is not installed here: run `make setup`") from None
        found[key] = dist.version
        if deps:
            for spec in dist.requires or []:
                req = Requirement(spec)
                if req.marker is None or req.marker.evaluate(env):
                    todo.append((req.name, True))
    return found


def pinned(versions: dict[str, str], lock: str) -> str:
    """A requirements file of `versions` with requirements.lock's hashes (pip then refuses any other file)."""
    blocks = {}
    for m in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+)((?:\s*\\\n\s+--hash=sha256:[0-9a-f]+)+)", lock, re.M):
        blocks[_canonical(m.group(1))] = (m.group(2), m.group(3))
    lines = []
    for name, version in sorted(versions.items()):
        if name not in blocks or blocks[name][0] != version:
            raise UserError(f"{name}=={version} is not in requirements.lock: run `make lock` (and `make setup`)")
        lines.append(f"{name}=={version}{blocks[name][1]}")
    return "\n".join(lines) + "\n"


def download_wheels(dest: Path, cache: Path = WHEEL_CACHE) -> list[Path]:
    """The server's wheels for Linux x86_64 CPython 3.11 into `dest` (via a cache: a rebuild downloads nothing)."""
    versions = closure(_names(REQUIREMENTS.read_text()))
    cache.mkdir(parents=True, exist_ok=True)
    req = cache / "requirements.txt"
    req.write_text(pinned(versions, LOCK.read_text()))
    platform = [a for p in PLATFORMS for a in ("--platform", p)]
    pip = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps",
           "--only-binary=:all:", *platform, "--python-version", PYTHON, "--implementation", "cp", "-d", str(cache)]
    print(f"downloading {len(versions)} wheels for the image (cached in {cache})", flush=True)
    run([*pip, "--require-hashes", "-r", str(req)], "pip download of the image's wheels")
    wheels = []
    for name, version in versions.items():
        match = [w for w in cache.glob("*.whl") if _canonical(w.name.split("-")[0]) == name
                 and w.name.split("-")[1] == version]
        if not match:
            raise UserError(f"no wheel of {name}=={version} for Linux x86_64 CPython {PYTHON} was downloaded")
        wheels.append(match[0])
    (dest / "wheels").mkdir(parents=True)
    for w in wheels:
        shutil.copy2(w, dest / "wheels" / w.name)
    pip_version = __import__("importlib.metadata").metadata.version("pip")
    run([*pip, f"pip=={pip_version}"], "pip download of pip")
    (dest / "pip").mkdir()
    shutil.copy2(next(cache.glob(f"pip-{pip_version}-*.whl")), dest / "pip")
    return wheels


def model_file(path: Path, kind: str, dest: Path):
    """An ONNX file of the model at `path` in dest/ (copied when it is one, exported when it is a .pt),
    checked to hold a `kind`. -> its OnnxNet."""
    from ..onnx_net import OnnxNet

    out = dest / f"{kind}.onnx"
    if path.suffix.lower() == ".onnx":
        shutil.copy2(path, out)
    elif path.suffix.lower() == ".pt":
        from .. import export, model

        try:
            net = model.load(path, "cpu", kind=kind)
        except ValueError as e:
            raise UserError(str(e)) from None
        export.export_onnx(net, out)
    else:
        raise UserError(f"'{path}': the image takes a .pt (exported here) or an .onnx {kind}")
    try:
        net = OnnxNet(out)
    except ValueError as e:
        raise UserError(str(e)) from None
    if net.kind != kind:
        raise UserError(f"'{path}' holds a {net.kind}, not a {kind}")
    return net


def tag_for(version: str) -> str:
    """A version as an image tag: v0.1.0 as is; prod:abc1234 -> prod-abc1234; sha256:... -> sha256-..."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", version)[:128].lstrip(".-") or "latest"


def version_at(path: Path, version: str) -> str:
    """A stage's label (prod:abc1234) as the version tag of the same commit (v0.1.0) when there is one."""
    entry = registry.RESOLVED.get(path)
    if entry is None or ":" not in version:    # a file's hash (sha256:...) is not in RESOLVED
        return version
    r = subprocess.run(["git", "-C", entry.repo, "tag", "--points-at", entry.rev, "--list", f"{entry.name}@*"],
                       capture_output=True, text=True)
    tags = sorted(t.split("@", 1)[1] for t in r.stdout.split() if "#" not in t) if r.returncode == 0 else []
    return tags[-1] if tags else version


def context(args, dest: Path) -> dict:
    """The build context in dest: Containerfile, dcgan/, model/, wheels/, pip/. -> the build args and what
    went in: {"VERSION", "ENCODER", "ENCODER_VERSION", "generator", "encoder"}."""
    spec, stage = (args.model, args.stage) if args.model else ("generator", args.stage or "prod")
    g_path, label = registry.resolve(spec, stage, args.repo)
    version = version_at(g_path, label)
    e_spec = registry.encoder_for(g_path, args.encoder)
    e_path, e_version = None, "none"
    if e_spec != "none":
        if not (Path(e_spec).exists() or registry.is_artifact_spec(e_spec, None)):
            raise UserError(f"encoder {e_spec} not found: give --encoder FILE, or --encoder none for an image "
                            "without image -> embedding")
        e_path, e_version = registry.resolve(e_spec, None, args.repo)
        e_version = version if e_version == label else e_version   # registered with the generator: its version
    (dest / "model").mkdir(parents=True)
    g = model_file(g_path, "generator", dest / "model")
    if e_path is not None:
        misfit = encoder_misfit(model_file(e_path, "encoder", dest / "model").config, g.config)
        if misfit:
            raise UserError(f"encoder '{e_spec}' {misfit}")
    shutil.copy2(CONTAINERFILE, dest / "Containerfile")
    shutil.copytree(ROOT / "dcgan", dest / "dcgan", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    download_wheels(dest)
    return {"VERSION": version, "ENCODER": "/model/encoder.onnx" if e_path else "none",
            "ENCODER_VERSION": e_version, "generator": g_path, "encoder": e_path}


def build(args) -> str:
    engine = engine_command(args.engine)
    podman = Path(engine[0]).name == "podman"
    with tempfile.TemporaryDirectory(prefix="dcgan-image-") as tmp:
        made = context(args, Path(tmp))
        tag = args.tag or f"{NAME}:{tag_for(made['VERSION'])}"
        ensure_base(args.base, engine)
        print(f"building {tag} from {args.base}: generator {made['generator']}"
              + (f", encoder {made['encoder']}" if made["encoder"] else ", no encoder"), flush=True)
        build_args = [a for k in ("VERSION", "ENCODER", "ENCODER_VERSION") for a in ("--build-arg", f"{k}={made[k]}")]
        cmd = [*engine, "build", *(PODMAN_FLAGS if podman else ()), "--network", "host",
               "--build-arg", f"BASE={args.base}", *build_args, "-t", tag, tmp]
        r = subprocess.run(cmd)
        if r.returncode != 0:
            raise UserError(f"`{' '.join(engine)} build` of {tag} failed (exit {r.returncode}): see its output above")
    size = run([*engine, "image", "inspect", "--format", "{{.Size}}", tag], "image inspect").stdout.strip()
    print(f"built {tag}: {int(size) / 1e6:.0f} MB. Run it (DCGAN_API_KEY: a secret in your environment):\n"
          f"  {' '.join(engine)} run --rm {' '.join(PODMAN_FLAGS) + ' ' if podman else ''}-p 8080:8080 "
          f"-e DCGAN_API_KEY {tag}", flush=True)
    return tag


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None,
                    help="a file (.pt or .onnx), name@version, or a name with --stage (default: generator --stage prod)")
    ap.add_argument("--stage", default=None, help="registry stage, with --model NAME (default without --model: prod)")
    ap.add_argument("--encoder", default=None,
                    help="a file or name@version; 'none' for no encoder; default: the one registered with the generator")
    ap.add_argument("--repo", default=".", help="DVC repository (path or git URL) of the registry")
    ap.add_argument("--base", default=LOCAL_BASE, help="base image with CPython 3.11 (python:3.11-slim where a "
                    f"registry is reachable); {LOCAL_BASE} is made here with mmdebstrap when missing")
    ap.add_argument("--tag", default=None, help=f"image name (default {NAME}:<version>)")
    ap.add_argument("--engine", default=None, help="podman or docker (default: podman when installed)")
    return ap


def main():
    build(parser().parse_args())


if __name__ == "__main__":
    cli.run(main)
