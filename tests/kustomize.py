"""Render the kustomizations under ``deploy/k8s`` without the kustomize binary.

Only the fields Depot's kustomizations use are understood: ``resources``
(files and directories), ``namespace``, ``images`` and JSON 6902 ``patches``
aimed at a kind and name. Any other field is refused, so an overlay cannot
grow past what this renders; where ``kubectl`` exists, tests/test_deploy.py
checks that it renders the same objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]

UNDERSTOOD = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PriorityClass"}
POD_TEMPLATES = {"Deployment": ("spec", "template"), "Job": ("spec", "template")}


class KustomizeError(Exception):
    """Raised for a kustomization this renderer does not understand, or a patch that misses."""


def render(directory: Path) -> list[Resource]:
    """The objects ``kustomize build directory`` prints, in the order they were listed."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - UNDERSTOOD
    if unknown:
        raise KustomizeError(f"{directory}: this renderer does not understand {sorted(unknown)}")
    resources: list[Resource] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        if path.is_dir():
            resources += render(path)
        else:
            resources += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for patch in kustomization.get("patches", []):
        _patch(resources, patch)
    for image in kustomization.get("images", []):
        _set_image(resources, image)
    if "namespace" in kustomization:
        for resource in resources:
            if resource["kind"] not in CLUSTER_SCOPED:
                resource["metadata"]["namespace"] = kustomization["namespace"]
    return resources


def _patch(resources: list[Resource], patch: dict[str, Any]) -> None:
    target = patch["target"]
    if set(target) - {"kind", "name"} or "path" in patch:
        raise KustomizeError(f"only inline patches aimed at a kind and name: {patch}")
    matches = [
        resource
        for resource in resources
        if resource["kind"] == target["kind"] and resource["metadata"]["name"] == target["name"]
    ]
    if not matches:
        raise KustomizeError(f"no {target['kind']} named {target['name']} to patch")
    for operation in yaml.safe_load(patch["patch"]):
        for resource in matches:
            _apply(resource, operation)


def _apply(document: Resource, operation: dict[str, Any]) -> None:
    """One RFC 6902 ``add``, ``replace`` or ``remove``."""
    *parents, last = [
        part.replace("~1", "/").replace("~0", "~") for part in operation["path"].split("/")[1:]
    ]
    node: Any = document
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    op = operation["op"]
    if isinstance(node, list):
        index = len(node) if last == "-" else int(last)
        if op == "add":
            node.insert(index, operation["value"])
        elif op == "replace":
            node[index] = operation["value"]
        elif op == "remove":
            del node[index]
        else:
            raise KustomizeError(f"unsupported operation {op!r}")
    elif op in {"replace", "remove"} and last not in node:
        raise KustomizeError(f"{operation['path']} does not exist, so it cannot be {op}d")
    elif op in {"add", "replace"}:
        node[last] = operation["value"]
    elif op == "remove":
        del node[last]
    else:
        raise KustomizeError(f"unsupported operation {op!r}")


def _set_image(resources: list[Resource], image: dict[str, str]) -> None:
    for resource in resources:
        if resource["kind"] not in POD_TEMPLATES:
            continue
        template = resource
        for key in POD_TEMPLATES[resource["kind"]]:
            template = template[key]
        spec = template["spec"]
        for container in spec.get("initContainers", []) + spec["containers"]:
            name = container["image"].partition("@")[0]
            if name.rpartition(":")[0] and "/" not in name.rpartition(":")[2]:
                name = name.rpartition(":")[0]
            if name == image["name"]:
                new = image.get("newName", image["name"])
                tag = image.get("newTag")
                container["image"] = f"{new}:{tag}" if tag else new
