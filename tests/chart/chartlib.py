"""Helpers for the chart tests: render chart/berth with the Helm SDK (helm-python-sdk, the Helm
Go SDK through its C ABI: no helm binary, no cluster) and look at the objects."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "chart" / "berth"
VALUES = Path(__file__).resolve().parent / "values"
RELEASE = "rel"
NAMESPACE = "vms"
# Kubernetes versions every rendered manifest is validated against (kubernetes-validate).
KUBE_VERSIONS = ("1.31.0", "1.37.0")
# The device nodes berth uses (/dev/vhost-net optional); the only hostPath volumes the chart
# may render.
DEVICES = {"/dev/kvm", "/dev/net/tun", "/dev/vhost-net"}


def load_values(name: str) -> dict[str, Any]:
    with open(VALUES / name, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def cirros() -> dict[str, Any]:
    return load_values("cirros.yaml")


def with_vm(values: dict[str, Any], name: str, **changes: Any) -> dict[str, Any]:
    """A deep copy of values whose VM `name` has dotted-path changes applied, e.g.
    with_vm(v, "cirros-test", **{"vmconfig.cpu.vcpu": 0}); a value of DELETE removes the key."""
    v = copy.deepcopy(values)
    for path, value in changes.items():
        node = v["vmlist"][name]
        *parents, last = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        if value is DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    return v


DELETE = object()


def render_raw(values: dict[str, Any] | None) -> dict[str, str]:
    with helm.Chart.load(os.fspath(CHART)) as chart:
        return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def render(values: dict[str, Any] | None) -> tuple[list[dict[str, Any]], str]:
    """Rendered objects (every YAML document of every template but NOTES.txt) and NOTES.txt."""
    out = render_raw(values)
    objs: list[dict[str, Any]] = []
    notes = ""
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objs.append(doc)
    return objs, notes


def lint(values: dict[str, Any] | None) -> dict[str, Any]:
    return helm.lint(os.fspath(CHART), values, strict=True, namespace=NAMESPACE)


def find(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for o in objs:
        if o["kind"] == kind and o["metadata"]["name"] == name:
            return o
    raise AssertionError(f"no {kind} {name} among {[(o['kind'], o['metadata']['name']) for o in objs]}")


def kinds(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def container(sts: dict[str, Any]) -> dict[str, Any]:
    cs = sts["spec"]["template"]["spec"]["containers"]
    assert len(cs) == 1, cs
    return cs[0]


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    """Env as name -> value (or the valueFrom dict)."""
    out: dict[str, Any] = {}
    for e in c.get("env", []):
        out[e["name"]] = e["value"] if "value" in e else e["valueFrom"]
    return out
