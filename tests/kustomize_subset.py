"""``render``: a stand-in for ``kustomize build``, for the tests of ``deploy/``.

No kustomize or kubectl binary can be installed where these tests run, so this implements exactly the subset of
kustomize that these kustomizations use, and raises :class:`KustomizeSubsetError` on anything else, so that no test
passes on a kustomization it does not understand. It implements:

- ``apiVersion: kustomize.config.k8s.io/v1beta1`` and ``kind: Kustomization``;
- ``resources``: YAML files inside the kustomization's directory (kustomize's default load restriction), with
  one or more objects each, and directories holding a ``kustomization.yaml``, built recursively, depth first;
- ``patches``: entries with only ``path``, naming a strategic-merge patch that identifies its one target by
  apiVersion, kind and name. Maps merge recursively; lists of containers, init containers, env vars and
  volumes merge by ``name``, volume mounts by ``mountPath``; ``tolerations``, ``command``, ``args`` and a
  HorizontalPodAutoscaler's ``metrics`` are replaced. Any other list, a null, or a ``$``-directive is an error;
- ``namespace``: set on every namespaced object after the patches; a Namespace object must already bear
  that name;
- ``images``: ``name`` with ``newName`` and/or ``newTag``, on Deployment containers' images (no digests).
  An entry that matches no container is an error, where kustomize would ignore it;
- ``sortOptions: {order: fifo}``: objects come out in resource order, the only order implemented.

Objects of a kind outside those the manifests use, or two objects with the same kind, namespace and name,
are errors too.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]


class KustomizeSubsetError(Exception):
    """A kustomization asks for something :func:`render` does not implement, or is wrong in a way kustomize
    would also refuse."""


KUSTOMIZATION_KEYS = frozenset({"apiVersion", "kind", "resources", "patches", "namespace", "images", "sortOptions"})
CLUSTER_SCOPED = frozenset({"Namespace"})
NAMESPACED = frozenset(
    {
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    }
)
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name"}
MERGE_KEYS["volumeMounts"] = "mountPath"
#: Lists a strategic merge replaces whole: no merge key in the API (tolerations, command, args), or atomic
#: (a HorizontalPodAutoscaler's metrics).
REPLACED_LISTS = frozenset({"tolerations", "command", "args", "metrics"})


def render(directory: Path) -> list[Obj]:
    """The objects ``kustomize build directory`` would print, for the subset in the module docstring."""
    kustomization = _load(directory / "kustomization.yaml")
    if len(kustomization) != 1:
        raise KustomizeSubsetError(f"{directory}/kustomization.yaml: expected one document")
    spec = kustomization[0]
    unknown = set(spec) - KUSTOMIZATION_KEYS
    if unknown:
        raise KustomizeSubsetError(f"{directory}: kustomization keys not implemented: {sorted(unknown)}")
    if (spec.get("apiVersion"), spec.get("kind")) != ("kustomize.config.k8s.io/v1beta1", "Kustomization"):
        raise KustomizeSubsetError(f"{directory}: not a kustomize.config.k8s.io/v1beta1 Kustomization")
    if spec.get("sortOptions", {"order": "fifo"}) != {"order": "fifo"}:
        raise KustomizeSubsetError(f"{directory}: only sortOptions {{order: fifo}} is implemented")
    objects: list[Obj] = []
    for entry in spec.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            objects += render(path)
        elif not path.is_relative_to(directory.resolve()):
            raise KustomizeSubsetError(f"{directory}: resource file {entry} is outside the kustomization root")
        else:
            objects += _load(path)
    for entry in spec.get("patches", []):
        if set(entry) != {"path"}:
            raise KustomizeSubsetError(f"{directory}: only patches with just a path are implemented: {entry}")
        for patch in _load(directory / entry["path"]):
            _apply_patch(objects, patch, entry["path"])
    if "namespace" in spec:
        _set_namespace(objects, spec["namespace"])
    for entry in spec.get("images", []):
        _set_image(objects, entry)
    seen = set()
    for obj in objects:
        key = (obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"])
        if key in seen:
            raise KustomizeSubsetError(f"{directory}: {key} appears twice")
        seen.add(key)
    return objects


def _load(path: Path) -> list[Obj]:
    if not path.is_file():
        raise KustomizeSubsetError(f"{path}: no such file")
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    for doc in docs:
        if doc.get("kind") == "Kustomization":
            continue
        if not isinstance(doc.get("metadata"), dict) or "name" not in doc["metadata"]:
            raise KustomizeSubsetError(f"{path}: an object without metadata.name")
        if doc.get("kind") not in NAMESPACED | CLUSTER_SCOPED:
            raise KustomizeSubsetError(f"{path}: kind {doc.get('kind')} is not implemented")
    return docs


def _apply_patch(objects: list[Obj], patch: Obj, source: str) -> None:
    _check_patch(patch, source)
    meta = patch.get("metadata", {})
    targets = [
        obj
        for obj in objects
        if (obj["apiVersion"], obj["kind"], obj["metadata"]["name"], obj["metadata"].get("namespace"))
        == (patch.get("apiVersion"), patch.get("kind"), meta.get("name"), meta.get("namespace"))
    ]
    if len(targets) != 1:
        raise KustomizeSubsetError(f"{source}: patch matches {len(targets)} objects, not one")
    _merge(targets[0], patch, source)


def _check_patch(value: Any, source: str) -> None:
    if value is None:
        raise KustomizeSubsetError(f"{source}: null (delete) in a patch is not implemented")
    if isinstance(value, dict):
        for key, item in value.items():
            if str(key).startswith("$"):
                raise KustomizeSubsetError(f"{source}: patch directive {key} is not implemented")
            _check_patch(item, source)
    elif isinstance(value, list):
        for item in value:
            _check_patch(item, source)


def _merge(target: Obj, patch: Obj, source: str) -> None:
    for key, value in patch.items():
        if key not in target:
            target[key] = copy.deepcopy(value)
        elif isinstance(value, dict) and isinstance(target[key], dict):
            _merge(target[key], value, source)
        elif isinstance(value, list) and key in MERGE_KEYS:
            _merge_list(target[key], value, MERGE_KEYS[key], source)
        elif isinstance(value, list) and key not in REPLACED_LISTS:
            raise KustomizeSubsetError(f"{source}: merging the list {key!r} is not implemented")
        elif isinstance(value, dict | list) != isinstance(target[key], dict | list):
            raise KustomizeSubsetError(f"{source}: {key!r} changes between a scalar and a collection")
        else:
            target[key] = copy.deepcopy(value)


def _merge_list(target: list[Obj], items: list[Obj], key: str, source: str) -> None:
    for item in items:
        if not isinstance(item, dict) or key not in item:
            raise KustomizeSubsetError(f"{source}: a list item without its merge key {key!r}")
        match = [existing for existing in target if existing.get(key) == item[key]]
        if match:
            _merge(match[0], item, source)
        else:
            target.append(copy.deepcopy(item))


def _set_namespace(objects: list[Obj], namespace: str) -> None:
    for obj in objects:
        if obj["kind"] in NAMESPACED:
            obj["metadata"]["namespace"] = namespace
        elif obj["metadata"]["name"] != namespace:
            # kustomize renames Namespace objects here; this subset only accepts one that needs no renaming.
            raise KustomizeSubsetError(f"Namespace {obj['metadata']['name']} is not the namespace {namespace}")


def _set_image(objects: list[Obj], entry: Obj) -> None:
    if "name" not in entry or not set(entry) - {"name"} or set(entry) - {"name", "newName", "newTag"}:
        raise KustomizeSubsetError(f"images: only name with newName and/or newTag is implemented: {entry}")
    matched = 0
    for obj in objects:
        if obj["kind"] != "Deployment":
            continue
        pod = obj["spec"]["template"]["spec"]
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            if "@" in container["image"]:
                raise KustomizeSubsetError(f"images: digests are not implemented: {container['image']}")
            name, tag = split_image(container["image"])
            if name == entry["name"]:
                tag = entry.get("newTag", tag)
                container["image"] = entry.get("newName", name) + (f":{tag}" if tag else "")
                matched += 1
    if not matched:
        raise KustomizeSubsetError(f"images: {entry['name']} matches no container")


def split_image(image: str) -> tuple[str, str | None]:
    name, sep, tag = image.rpartition(":")
    if not sep or "/" in tag:  # no tag, or the colon was a registry's port
        return image, None
    return name, tag


# -- reading the rendered objects ------------------------------------------------------------------------
