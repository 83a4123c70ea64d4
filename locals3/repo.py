"""A clone's side: its DVC remote configuration, and the .dvc/config.local that `up` writes.

One server serves every clone of the project on this machine; `up` in a clone only writes that clone's
.dvc/config.local: the server's keys, and its port as the remote's `endpointurl` when it is not the committed one.

config.local also gets `configpath` = .dvc/aws-s3-checksums.ini: botocore's default CRC32 checksums must be
limited to `when_required` or pulls of files over 50 MiB from rclone fail (see that file).
"""
from __future__ import annotations

import io
from pathlib import Path
from urllib.parse import urlsplit

from .store import (AWS_CONFIG, DEFAULT_BUCKET, DEFAULT_PORT, HOST, LOCAL_HOSTS, REMOTE, UsageError, _read_json,
                    _write_private, env_port, home)


def find_root(start: Path | None = None) -> Path:
    p = (start or Path.cwd()).resolve()
    for d in (p, *p.parents):
        if (d / ".dvc").is_dir():
            return d
    raise UsageError(f"not inside a DVC repository: {p}: run it in the project's folder, or pass --repo PATH")


def _dvc_config(root: Path):
    from dvc.config import Config, ConfigError

    class AtomicLocalConfig(Config):
        """dvc's Config, but config.local (it holds the secret) is written 0600 through a unique temporary
        file and a rename, so a `dvc push` reading it meanwhile never sees half a file."""

        def _save_config(self, level, conf_dict):
            try:
                from configobj import ConfigObj
                from dvc.config import _pack_named      # what dvc's own _save_config does, into a buffer
            except ImportError:                         # another dvc version: its own (in-place) write
                return super()._save_config(level, conf_dict)
            if level != "local":
                return super()._save_config(level, conf_dict)
            buf = io.BytesIO()
            ConfigObj(_pack_named(conf_dict)).write(buf)
            _write_private(Path(self.files[level]), buf.getvalue())

    try:
        return AtomicLocalConfig(dvc_dir=str(root / ".dvc"))
    except ConfigError as e:
        raise UsageError(f"{root / '.dvc'}: {e}: fix .dvc/config or .dvc/config.local") from None


def remote_conf(root: Path, name: str | None = None) -> tuple[str | None, dict]:
    """(name, merged config) of remote `name`, or of the default remote."""
    conf = _dvc_config(root)
    name = name or conf["core"].get("remote")
    if not name:
        return None, {}
    return name, dict(conf["remote"].get(name, {}))


def _our_ports() -> set[int]:
    ports = {DEFAULT_PORT}
    for f in ("server.json", "last_port.json"):
        p = _read_json(home() / f).get("port")
        if isinstance(p, int):
            ports.add(p)
    if env_port() is not None:
        ports.add(env_port())
    return ports


def is_embedded(rconf: dict) -> bool:
    """The remote is this project's own server: s3:// at 127.0.0.1/localhost on the port it uses or last used.
    (Another S3 server on this machine, say MinIO on 127.0.0.1:9000, is not.)"""
    if not str(rconf.get("url", "")).startswith("s3://"):
        return False
    ep = urlsplit(str(rconf.get("endpointurl", "")))
    try:
        port = ep.port or (443 if ep.scheme == "https" else 80)
    except ValueError:
        return False
    return (ep.hostname or "") in LOCAL_HOSTS and port in _our_ports()


def _bucket(rconf: dict) -> str:
    url = str(rconf.get("url", ""))
    return urlsplit(url).netloc if url.startswith("s3://") and urlsplit(url).netloc else DEFAULT_BUCKET


def _repo_lock(root: Path) -> Path:
    return root / ".dvc" / "tmp" / "dcgan-storage.lock"      # .dvc/tmp is git-ignored


def configure_repo(root: Path, port: int, key: str, secret: str):
    """Write the server's keys, port and the checksum config file into the repository's .dvc/config.local.
    Call it holding the clone's lock (_repo_lock): concurrent read-modify-writes would lose each other's edits."""
    conf = _dvc_config(root)
    committed = dict(conf.load_one("repo").get("remote", {}).get(REMOTE, {}))
    want_url = f"http://{HOST}:{port}"
    with conf.edit("local") as local:
        r = local.setdefault("remote", {}).setdefault(REMOTE, {})
        r["access_key_id"] = key
        r["secret_access_key"] = secret
        r["configpath"] = str((root / AWS_CONFIG).resolve())
        if committed.get("endpointurl") == want_url:
            r.pop("endpointurl", None)
        else:
            r["endpointurl"] = want_url
