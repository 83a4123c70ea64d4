"""deploy/kubernetes.yaml and deploy/kserve.yaml agree with the image and the server: valid YAML of the kinds
docs/deploy.md names, the image's port, probes on routes the server answers without the key, the key from the
Secret, and a grace period above the server's request time limit. (No cluster is reachable here: this is all
that is checked of them.)"""
import re

import yaml

from conftest import ROOT
from dcgan.serve import __main__ as serve_main
from dcgan.serve.app import PROBES

DEPLOY = ROOT / "deploy"


def image_port() -> int:
    return int(re.search(r"PORT=(\d+)", (DEPLOY / "Containerfile").read_text()).group(1))


def containers(doc: dict) -> list:
    spec = doc["spec"]
    return spec["template"]["spec"]["containers"] if doc["kind"] == "Deployment" else spec["predictor"]["containers"]


def manifests() -> dict:
    docs = {}
    for name in ("kubernetes.yaml", "kserve.yaml"):
        for doc in yaml.safe_load_all((DEPLOY / name).read_text()):
            if doc:
                docs[doc["kind"]] = doc
    return docs


def test_the_manifests_are_the_kinds_the_docs_name():
    assert set(manifests()) == {"Deployment", "Service", "HorizontalPodAutoscaler", "InferenceService"}


def test_ports_probes_and_the_key_agree_with_the_image_and_the_server():
    docs, port = manifests(), image_port()
    for kind in ("Deployment", "InferenceService"):
        (c,) = containers(docs[kind])
        ports = {p.get("name"): p["containerPort"] for p in c["ports"]}
        assert list(ports.values()) == [port], kind
        for probe in ("readinessProbe", "livenessProbe"):
            get = c[probe]["httpGet"]
            assert get["path"] in PROBES, (kind, probe)               # open without the key
            assert get["port"] in (port, *[n for n in ports if n]), (kind, probe)
        assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
        key = next(e for e in c["env"] if e["name"] == serve_main.API_KEY_ENV)
        assert key["valueFrom"]["secretKeyRef"] == {"name": "dcgan-serve", "key": "api-key"}
        assert re.fullmatch(r"[\w.-]+(/[\w.-]+)*:v\d+\.\d+\.\d+", c["image"]), c["image"]
    service = docs["Service"]["spec"]["ports"][0]
    assert service["targetPort"] in (port, "http")


def test_the_grace_period_covers_the_pause_and_the_longest_request():
    pod = manifests()["Deployment"]["spec"]["template"]["spec"]
    timeout = serve_main.parser().get_default("timeout_s")
    pause = pod["containers"][0].get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pause_s = float(pause[-1]) if pause[:1] == ["sleep"] else 0.0   # counts against the grace period
    assert pod["terminationGracePeriodSeconds"] > pause_s + timeout
