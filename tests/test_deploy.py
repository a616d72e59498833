"""The Kubernetes manifests under ``deploy/``: schema-valid, hardened, and consistent with the code they run.

Every object is validated with kubernetes-validate in strict mode (unknown fields are errors) against the
oldest Kubernetes these manifests target and the newest the package knows, offline from its bundled schemas.
The tests then check what the manifests promise: the runner starts at zero replicas, GPU and edge runners
get what their hardware needs, every container is locked down and probed, RBAC is exactly what the
Kubernetes scaler calls, every ``WASMGATE_*`` variable is a real setting with a value that parses (or one of
the registry store's, which the store's own change brings), and the gateway runs as several replicas on a
registry store: credentials from a Secret, no volume claim, CPU requests, an autoscaler on that very
Deployment, a disruption budget and a spread over nodes.

The overlays are rendered with :func:`tests.kustomize_subset.render`, a stand-in for ``kustomize build``
(see that module for why, and for the subset it implements).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from kubernetes.utils import parse_quantity

from gateway.auth import check_bind
from gateway.server import _uvicorn_options
from gateway.settings import Settings
from tests.kustomize_subset import KustomizeSubsetError, Obj, render, split_image

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
BASE = DEPLOY / "base"
RENDERINGS = {"base": BASE, "gpu": DEPLOY / "overlays" / "gpu", "edge": DEPLOY / "overlays" / "edge"}
OVERLAY_NAMESPACE = "wasmgate"
#: The oldest Kubernetes these manifests are written for (sortOptions needs kubectl 1.27+; the restricted Pod
#: Security profile and EndpointSlice v1 are long GA by then), and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())
HEALTH = {"livenessProbe": "/v2/health/live", "readinessProbe": "/v2/health/ready"}
#: Every variable the settings read; anything else named WASMGATE_* is a typo the gateway would ignore.
SETTING_NAMES = frozenset(Settings().to_env())
#: The registry store's variables, exactly (each one a setting: asserted below).
REGISTRY_ENV = frozenset(
    {
        "WASMGATE_STORE",
        "WASMGATE_REGISTRY_USERNAME",
        "WASMGATE_REGISTRY_PASSWORD",
        "WASMGATE_REGISTRY_CA_FILE",
        "WASMGATE_REGISTRY_PLAIN_HTTP",
        "WASMGATE_REGISTRY_SYNC_INTERVAL_S",
    }
)
#: Variables whose values are secrets, and the operator-created Secret and key each comes from.
SECRET_REFS = {
    "WASMGATE_ADMIN_TOKEN": ("wasmgate-tokens", "admin-token"),
    "WASMGATE_INFERENCE_TOKEN": ("wasmgate-tokens", "inference-token"),
    "WASMGATE_REGISTRY_USERNAME": ("wasmgate-registry", "username"),
    "WASMGATE_REGISTRY_PASSWORD": ("wasmgate-registry", "password"),
}
SECRET_LOOKING = re.compile(r"TOKEN|PASSWORD|USERNAME|SECRET|KEY")
#: Variables outside the settings that the manifests may set, and why: the root filesystem is read-only, so
#: libraries that cache under $HOME are pointed at the /tmp volume.
OTHER_ENV = frozenset({"HOME"})
GPU = "nvidia.com/gpu"
SCALER_RULES = {
    ("apps", "deployments", "get", ("wasmgate-runner",)),
    ("apps", "deployments", "patch", ("wasmgate-runner",)),
    ("apps", "deployments/scale", "get", ("wasmgate-runner",)),
    ("apps", "deployments/scale", "patch", ("wasmgate-runner",)),
    ("discovery.k8s.io", "endpointslices", "list", ()),
    ("discovery.k8s.io", "endpointslices", "watch", ()),
}


@functools.cache
def _rendered(name: str) -> str:
    return json.dumps(render(RENDERINGS[name]))


def rendered(name: str) -> list[Obj]:
    """A fresh copy of a rendering, which a test may change freely."""
    objects: list[Obj] = json.loads(_rendered(name))
    return objects


def one(objects: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


@dataclasses.dataclass
class Container:
    objects: list[Obj]
    deployment: Obj
    pod: Obj
    spec: Obj

    @property
    def env(self) -> dict[str, str]:
        """The container's environment: ConfigMaps' data (``envFrom``) and literal values as they are; a
        secret from its Secret, and the pod's name from the downward API, as stand-in values (the Secrets are
        the operator's, the name the pod's)."""
        env = {}
        for source in self.spec.get("envFrom", []):
            assert set(source) == {"configMapRef"}, f"{self.spec['name']}: only ConfigMaps feed envFrom"
            assert not source["configMapRef"].get("optional"), "a container must not start without its settings"
            env.update(one(self.objects, "ConfigMap", source["configMapRef"]["name"])["data"])
        for var in self.spec.get("env", []):
            name = var["name"]
            # env wins over envFrom without a word: a variable set in both is a trap.
            assert name not in env, f"{name} is set twice"
            if name in SECRET_REFS:
                assert set(var) == {"name", "valueFrom"}, f"{name}: secrets come from a Secret"
                ref = var["valueFrom"]["secretKeyRef"]
                assert (ref["name"], ref["key"]) == SECRET_REFS[name], var
                env[name] = f"<secret {ref['key']}>"
            elif "valueFrom" in var:
                assert var["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}, var
                env[name] = "<pod name>"
            else:
                assert set(var) == {"name", "value"}, f"{name}: only literal values are expected"
                env[name] = var["value"]
        return env

    def settings(self) -> Settings:
        return Settings.from_env(self.env)

    def port(self, ref: str | int) -> int:
        """The container port a probe or Service targets, by name or number; fails when it is not declared."""
        for port in self.spec.get("ports", []):
            if ref in (port.get("name"), port["containerPort"]):
                return int(port["containerPort"])
        raise AssertionError(f"{self.spec['name']} exposes no port {ref!r}")


def containers(objects: list[Obj]) -> Iterator[Container]:
    for obj in objects:
        if obj["kind"] == "Deployment":
            pod = obj["spec"]["template"]["spec"]
            for spec in pod.get("initContainers", []) + pod["containers"]:
                yield Container(objects, obj, pod, spec)


def gateway(objects: list[Obj]) -> Container:
    return next(c for c in containers(objects) if c.deployment["metadata"]["name"] == "wasmgate")


def runner(objects: list[Obj]) -> Container:
    return next(c for c in containers(objects) if c.deployment["metadata"]["name"] == "wasmgate-runner")


# -- schema validation -------------------------------------------------------------------------------------


BASE_FILES = sorted(p.name for p in BASE.glob("*.yaml") if p.name != "kustomization.yaml")


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("filename", BASE_FILES)
def test_base_file_validates_strictly(filename: str, version: str) -> None:
    docs = [doc for doc in yaml.safe_load_all((BASE / filename).read_text()) if doc is not None]
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", RENDERINGS)
def test_rendered_objects_validate_strictly(name: str, version: str) -> None:
    objects = rendered(name)
    assert objects
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize(
    ("path", "typo"),
    [
        (["spec"], ("replicas", "replica")),
        (
            ["spec", "template", "spec", "containers", 0, "securityContext"],
            ("readOnlyRootFilesystem", "readOnlyRootFileSystem"),
        ),
    ],
)
def test_strict_validation_rejects_unknown_fields(path: list[str | int], typo: tuple[str, str]) -> None:
    deployment = one(rendered("base"), "Deployment", "wasmgate-runner")
    node: Any = deployment
    for step in path:
        node = node[step]
    right, wrong = typo
    node[wrong] = node.pop(right)
    with pytest.raises(kubernetes_validate.ValidationError, match=wrong):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


def test_base_lists_every_manifest_in_numbered_order() -> None:
    """House style: manifests are numbered in apply order, and each says why it has its number."""
    resources = yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"]
    assert resources == BASE_FILES  # every file applied, in the order of its number
    for filename in BASE_FILES:
        number = re.match(r"(\d\d)-", filename)
        assert number, f"{filename} is not numbered"
        assert (BASE / filename).read_text().startswith(f"# {number[1]}: "), f"{filename}: say why {number[1]}"


# -- what the manifests promise ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", RENDERINGS)
def test_runner_starts_at_zero_replicas(name: str) -> None:
    assert one(rendered(name), "Deployment", "wasmgate-runner")["spec"]["replicas"] == 0


def test_gpu_runner_takes_one_gpu_on_a_gpu_node() -> None:
    objects = rendered("gpu")
    r = runner(objects)
    resources = r.spec["resources"]
    assert parse_quantity(resources["limits"][GPU]) == 1
    assert resources["requests"][GPU] == resources["limits"][GPU]
    assert r.pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in r.pod["tolerations"]
    assert r.spec["image"].endswith("-cuda")
    assert r.settings().execution_providers == "auto"
    # The gateway runs no model on a GPU and is not scheduled onto GPU nodes.
    g = gateway(objects)
    assert GPU not in json.dumps(g.pod)


def test_edge_has_no_gpu_anywhere() -> None:
    objects = rendered("edge")
    assert GPU not in json.dumps(objects)
    for c in containers(objects):
        assert not any("nvidia" in key for key in c.pod.get("nodeSelector", {}))
        assert not c.pod.get("tolerations")
    r = runner(objects)
    assert r.spec["image"].endswith("-cpu")
    assert r.settings().execution_providers == "cpu"
    assert gateway(objects).settings().pod_max_replicas == 1
    # The router knows there is no accelerator: models that fit the sandbox stay in the Wasm tier.
    assert gateway(objects).settings().accelerators == "none"


@pytest.mark.parametrize("name", RENDERINGS)
def test_every_container_is_hardened(name: str) -> None:
    for c in containers(rendered(name)):
        pod_sc, sc = c.pod["securityContext"], c.spec["securityContext"]
        assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True
        uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
        assert isinstance(uid, int)
        assert uid > 0
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert not sc.get("privileged")
        # Service links would inject WASMGATE_PORT=tcp://... for the `wasmgate` Service over the port setting.
        assert c.pod["enableServiceLinks"] is False
        # With a read-only root, everything the app writes must be a mounted volume.
        mounts = {m["mountPath"]: m for m in c.spec["volumeMounts"]}
        volumes = {v["name"] for v in c.pod["volumes"]}
        for path in (str(c.settings().data_dir), "/tmp"):
            assert path in mounts, f"{c.spec['name']}: {path} is not a volume"
            assert not mounts[path].get("readOnly")
            assert mounts[path]["name"] in volumes


@pytest.mark.parametrize("name", RENDERINGS)
def test_every_container_has_requests_and_limits(name: str) -> None:
    for c in containers(rendered(name)):
        requests, limits = c.spec["resources"]["requests"], c.spec["resources"]["limits"]
        for resource in ("cpu", "memory"):
            assert parse_quantity(requests[resource]) <= parse_quantity(limits[resource]), resource
        for resource in set(requests) | set(limits):
            if "/" in resource:  # extended resources (GPUs) cannot be overcommitted
                assert requests.get(resource) == limits.get(resource), resource


@pytest.mark.parametrize("name", RENDERINGS)
def test_probes_hit_the_health_endpoints_on_the_serving_port(name: str) -> None:
    for c in containers(rendered(name)):
        serving = c.settings().port
        assert c.port("http") == serving
        for probe, path in HEALTH.items():
            get = c.spec[probe]["httpGet"]
            assert get["path"] == path
            assert c.port(get["port"]) == serving
        if "startupProbe" in c.spec:
            assert c.port(c.spec["startupProbe"]["httpGet"]["port"]) == serving
    # A runner's start can be slow (onnxruntime, CUDA): liveness must wait for it.
    assert "startupProbe" in runner(rendered(name)).spec


@pytest.mark.parametrize("name", RENDERINGS)
def test_termination_grace_outlasts_the_drain(name: str) -> None:
    drain = _uvicorn_options(Settings())["timeout_graceful_shutdown"]
    for c in containers(rendered(name)):
        pause = 0
        if "lifecycle" in c.spec:
            command = c.spec["lifecycle"]["preStop"]["exec"]["command"]
            assert command[0] == "sleep"
            pause = int(command[1])
        assert c.pod["terminationGracePeriodSeconds"] > pause + drain


@pytest.mark.parametrize("name", RENDERINGS)
def test_rbac_is_exactly_what_the_scaler_calls(name: str) -> None:
    objects = rendered(name)
    kinds = {o["kind"] for o in objects}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}
    (role,) = [o for o in objects if o["kind"] == "Role"]
    granted = {
        (group, resource, verb, tuple(rule.get("resourceNames", ())))
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == SCALER_RULES
    (binding,) = [o for o in objects if o["kind"] == "RoleBinding"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    g, r = gateway(objects), runner(objects)
    account = g.pod["serviceAccountName"]
    (subject,) = binding["subjects"]
    assert (subject["kind"], subject["name"]) == ("ServiceAccount", account)
    # No namespace means the binding's own, which is where the gateway runs.
    assert subject.get("namespace", binding["metadata"].get("namespace")) == binding["metadata"].get("namespace")
    one(objects, "ServiceAccount", account)
    assert g.pod["automountServiceAccountToken"] is True
    # The runner has an account of its own, bound to nothing, and no token.
    assert r.pod["serviceAccountName"] != account
    assert one(objects, "ServiceAccount", r.pod["serviceAccountName"])["automountServiceAccountToken"] is False
    assert r.pod["automountServiceAccountToken"] is False
    # The scaler's settings name what the Role allows and what the manifests create.
    settings = g.settings()
    assert settings.pod_scaler == "kubernetes"
    assert settings.k8s_namespace == ""  # the pod's own namespace, i.e. the Role's
    apps = [rule for rule in role["rules"] if rule["apiGroups"] == ["apps"]]
    assert all(rule["resourceNames"] == [settings.k8s_deployment] for rule in apps)
    assert settings.k8s_deployment == r.deployment["metadata"]["name"]
    # Several gateways share the runners, each under its own pod name: the Deployment rules are the ones used.
    assert settings.k8s_gateway_id == "<pod name>"


@pytest.mark.parametrize("name", RENDERINGS)
def test_services_select_their_own_pods(name: str) -> None:
    objects = rendered(name)
    g, r = gateway(objects), runner(objects)
    settings = g.settings()
    for service_name, own, other in (("wasmgate", g, r), (settings.k8s_service, r, g)):
        service = one(objects, "Service", service_name)
        selector = service["spec"]["selector"]
        assert selector.items() <= own.deployment["spec"]["template"]["metadata"]["labels"].items()
        assert not selector.items() <= other.deployment["spec"]["template"]["metadata"]["labels"].items()
        assert selector == own.deployment["spec"]["selector"]["matchLabels"]
        port, *more = service["spec"]["ports"]
        assert port["name"] == "http"
        assert own.port(port["targetPort"]) == own.settings().port
        # The gateway also serves OIP v2 over gRPC, on the port its settings name; a runner serves HTTP only.
        wanted = [("grpc", own.settings().grpc_port)] if own is g else []
        assert [(p["name"], own.port(p["targetPort"])) for p in more] == wanted
    # The scaler reads runner addresses from EndpointSlices by the port's name.
    runner_ports = one(objects, "Service", settings.k8s_service)["spec"]["ports"]
    assert settings.k8s_port_name in {p["name"] for p in runner_ports}


@pytest.mark.parametrize("name", RENDERINGS)
def test_runners_fetch_functions_from_the_gateway_service(name: str) -> None:
    objects = rendered(name)
    url = urlsplit(runner(objects).settings().runner_source_url)
    service = one(objects, "Service", "wasmgate")
    assert url.scheme == "http"
    # The short name resolves in the runner's own namespace, which is the gateway's.
    assert url.hostname == service["metadata"]["name"]
    assert url.port == service["spec"]["ports"][0]["port"]


@pytest.mark.parametrize("name", RENDERINGS)
def test_env_vars_are_real_settings_with_values_that_parse(name: str) -> None:
    for c in containers(rendered(name)):
        assert REGISTRY_ENV <= SETTING_NAMES
        unknown = {var for var in c.env if var.startswith("WASMGATE_")} - SETTING_NAMES
        assert not unknown, f"{c.spec['name']}: not settings: {sorted(unknown)}"
        assert set(c.env) - SETTING_NAMES <= OTHER_ENV
        settings = c.settings()  # raises ValueError naming a variable whose value does not parse
        assert settings.host == "0.0.0.0"


@pytest.mark.parametrize("name", RENDERINGS)
def test_labels_and_namespace(name: str) -> None:
    objects = rendered(name)
    for obj in objects:
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "wasmgate", obj["metadata"]["name"]
        if name != "base" and obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == OVERLAY_NAMESPACE
    for c in containers(objects):
        labels = c.deployment["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "wasmgate"
        assert labels["app.kubernetes.io/component"] == c.spec["name"]  # gateway | runner
        assert labels["app.kubernetes.io/part-of"] == "wasmgate"
        _, tag = split_image(c.spec["image"])
        assert tag
        assert tag != "latest"
    if name != "base":
        namespace = one(objects, "Namespace", OVERLAY_NAMESPACE)
        assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# -- several gateways on a registry store -------------------------------------------------------------------


def autoscaler(objects: list[Obj]) -> Obj:
    (found,) = [o for o in objects if o["kind"] == "HorizontalPodAutoscaler"]
    return found


@pytest.mark.parametrize("name", RENDERINGS)
def test_the_autoscaler_scales_the_gateway_deployment_on_cpu(name: str) -> None:
    objects = rendered(name)
    g = gateway(objects)
    spec = autoscaler(objects)["spec"]
    target = g.deployment
    assert spec["scaleTargetRef"] == {
        "apiVersion": target["apiVersion"],
        "kind": target["kind"],
        "name": target["metadata"]["name"],
    }
    # The autoscaler owns the count: a count in the manifest would be applied again by every `kubectl apply`.
    assert "replicas" not in target["spec"]
    assert spec["minReplicas"] >= 2
    assert spec["maxReplicas"] > spec["minReplicas"]
    (metric,) = spec["metrics"]
    assert (metric["type"], metric["resource"]["name"]) == ("Resource", "cpu")
    # Utilization is measured against requests, and the autoscaler has no figure for a pod with a container
    # that lacks one. Every gateway container has one, whichever target type an overlay picks.
    for container in g.pod["containers"] + g.pod.get("initContainers", []):
        assert parse_quantity(container["resources"]["requests"]["cpu"]) > 0
    assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 60


def test_the_edge_runs_fewer_gateways() -> None:
    edge, base = autoscaler(rendered("edge"))["spec"], autoscaler(rendered("base"))["spec"]
    assert edge["minReplicas"] <= edge["maxReplicas"] < base["maxReplicas"]
    (metric,) = edge["metrics"]
    # The edge gateway's request is tiny, so the edge scales on absolute CPU, within the container's limit.
    target = metric["resource"]["target"]
    assert target["type"] == "AverageValue"
    limit = gateway(rendered("edge")).spec["resources"]["limits"]["cpu"]
    assert parse_quantity(target["averageValue"]) < parse_quantity(limit)


@pytest.mark.parametrize("name", RENDERINGS)
def test_gateways_roll_and_are_evicted_one_at_a_time_spread_over_nodes(name: str) -> None:
    objects = rendered(name)
    g = gateway(objects)
    pod_labels = g.deployment["spec"]["template"]["metadata"]["labels"]
    selector = g.deployment["spec"]["selector"]["matchLabels"]
    strategy = g.deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0
    (budget,) = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    assert budget["spec"]["selector"]["matchLabels"] == selector
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert budget["spec"]["maxUnavailable"] < autoscaler(objects)["spec"]["minReplicas"]
    spread = {c["topologyKey"]: c for c in g.pod["topologySpreadConstraints"]}
    across_nodes = spread["kubernetes.io/hostname"]
    assert across_nodes["maxSkew"] == 1
    assert across_nodes["labelSelector"]["matchLabels"] == selector


@pytest.mark.parametrize("name", RENDERINGS)
def test_no_deployment_that_runs_several_replicas_mounts_a_claim(name: str) -> None:
    """A ReadWriteOnce claim cannot be mounted by replicas on several nodes (and a single-writer store must not
    be shared by several writers anyway)."""
    objects = rendered(name)
    settings = gateway(objects).settings()
    hpa = autoscaler(objects)["spec"]
    # The most replicas each may run: what its autoscaler allows, or for the runners what the gateways may ask.
    most = {hpa["scaleTargetRef"]["name"]: hpa["maxReplicas"], settings.k8s_deployment: settings.pod_max_replicas}
    assert most["wasmgate"] > 1
    for deployment in (o for o in objects if o["kind"] == "Deployment"):
        replicas = most.get(deployment["metadata"]["name"], deployment["spec"].get("replicas", 1))
        claims = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v]
        assert replicas <= 1 or not claims, f"{deployment['metadata']['name']} runs {replicas} replicas on {claims}"


@pytest.mark.parametrize("name", RENDERINGS)
def test_the_gateway_runs_on_a_registry_store_with_a_cache_of_its_own(name: str) -> None:
    objects = rendered(name)
    g = gateway(objects)
    env = g.env
    assert {
        "WASMGATE_STORE",
        "WASMGATE_REGISTRY_USERNAME",
        "WASMGATE_REGISTRY_PASSWORD",
        "WASMGATE_REGISTRY_SYNC_INTERVAL_S",
    } <= set(env) & REGISTRY_ENV
    store = urlsplit(env["WASMGATE_STORE"])
    assert store.scheme == "oci"
    assert store.hostname
    assert store.path.strip("/")
    assert float(env["WASMGATE_REGISTRY_SYNC_INTERVAL_S"]) > 0
    # Credentials are optional (an anonymous in-cluster registry needs none), and come only from the Secret.
    for var in g.spec["env"]:
        if var["name"] in ("WASMGATE_REGISTRY_USERNAME", "WASMGATE_REGISTRY_PASSWORD"):
            assert var["valueFrom"]["secretKeyRef"]["optional"] is True
    # An optional CA bundle, read-only; the path the store ConfigMap suggests for it lies inside the mount.
    volumes = {v["name"]: v for v in g.pod["volumes"]}
    mounts = {m["mountPath"]: m for m in g.spec["volumeMounts"]}
    (ca_mount,) = [m for m in mounts.values() if m["name"] == "registry-ca"]
    assert ca_mount["readOnly"] is True
    assert volumes["registry-ca"]["configMap"]["optional"] is True
    suggested = re.search(r"WASMGATE_REGISTRY_CA_FILE: (\S+)", (BASE / "30-gateway-store.yaml").read_text())
    assert suggested
    assert suggested[1].startswith(ca_mount["mountPath"] + "/")
    # The data directory is a per-pod cache, bounded.
    data = volumes[mounts[str(g.settings().data_dir)]["name"]]
    assert set(data) == {"name", "emptyDir"}
    assert parse_quantity(data["emptyDir"]["sizeLimit"]) > 0


@pytest.mark.parametrize("name", RENDERINGS)
def test_secrets_come_only_from_secret_key_refs(name: str) -> None:
    objects = rendered(name)
    assert not [o for o in objects if o["kind"] == "Secret"]  # the operator's, never in these files
    for c in containers(objects):
        for var in c.spec.get("env", []):
            if SECRET_LOOKING.search(var["name"]):
                assert var["name"] in SECRET_REFS, var["name"]
                assert set(var["valueFrom"]) == {"secretKeyRef"}, var
        for source in c.spec.get("envFrom", []):
            data = one(objects, "ConfigMap", source["configMapRef"]["name"])["data"]
            assert not [key for key in data if SECRET_LOOKING.search(key)]


def test_registry_variables_are_named_as_the_store_reads_them_everywhere() -> None:
    """In manifests, comments and the README alike: a misspelt variable is silently ignored."""
    for path in sorted(DEPLOY.rglob("*")):
        if path.suffix in (".yaml", ".md"):
            for found in re.findall(r"WASMGATE_(?:STORE|REGISTRY)\w*", path.read_text()):
                assert found in REGISTRY_ENV, f"{path}: {found}"


# -- the renderer refuses what it does not implement ------------------------------------------------------


def _write(directory: Path, files: dict[str, str]) -> Path:
    for filename, text in files.items():
        (directory / filename).write_text(text)
    return directory


KUSTOMIZATION = "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
ACCOUNT = "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: a\n"
RUNNER_PATCH: Obj = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "wasmgate-runner"}}


def test_renderer_refuses_unknown_kustomization_keys(tmp_path: Path) -> None:
    _write(tmp_path, {"kustomization.yaml": KUSTOMIZATION + "resources: [a.yaml]\ncommonLabels: {x: y}\n"})
    _write(tmp_path, {"a.yaml": ACCOUNT})
    with pytest.raises(KustomizeSubsetError, match="commonLabels"):
        render(tmp_path)


def test_renderer_refuses_list_merges_it_does_not_model(tmp_path: Path) -> None:
    containers = [{"name": "runner", "ports": [{"containerPort": 9000}]}]
    patch = {**RUNNER_PATCH, "spec": {"template": {"spec": {"containers": containers}}}}
    _write(tmp_path, {"kustomization.yaml": KUSTOMIZATION + f"resources: [{BASE}]\npatches:\n  - path: p.yaml\n"})
    _write(tmp_path, {"p.yaml": yaml.safe_dump(patch)})
    with pytest.raises(KustomizeSubsetError, match="ports"):
        render(tmp_path)


def test_renderer_refuses_resource_files_outside_the_root(tmp_path: Path) -> None:
    (tmp_path / "overlay").mkdir()
    _write(tmp_path, {"a.yaml": ACCOUNT})
    _write(tmp_path / "overlay", {"kustomization.yaml": KUSTOMIZATION + "resources: [../a.yaml]\n"})
    with pytest.raises(KustomizeSubsetError, match="outside"):
        render(tmp_path / "overlay")


def test_renderer_merges_env_by_name_and_replaces_tolerations(tmp_path: Path) -> None:
    pod = {
        "tolerations": [{"key": "k", "operator": "Exists"}],
        "containers": [{"name": "runner", "env": [{"name": "WASMGATE_PORT", "value": "9"}]}],
    }
    patch = {**RUNNER_PATCH, "spec": {"template": {"spec": pod}}}
    patch["metadata"] = {**RUNNER_PATCH["metadata"], "namespace": OVERLAY_NAMESPACE}
    gpu = RENDERINGS["gpu"]
    _write(tmp_path, {"kustomization.yaml": KUSTOMIZATION + f"resources: [{gpu}]\npatches:\n  - path: p.yaml\n"})
    _write(tmp_path, {"p.yaml": yaml.safe_dump(patch)})
    r = runner(render(tmp_path))
    assert r.env["WASMGATE_PORT"] == "9"
    assert list(r.env) == list(runner(rendered("gpu")).env)  # merged in place, nothing dropped or moved
    assert r.pod["tolerations"] == pod["tolerations"]  # the GPU toleration is gone: lists without a key replace


@pytest.mark.parametrize("name", RENDERINGS)
def test_the_gateway_binds_beyond_loopback_only_with_an_admin_token(name: str) -> None:
    objects = rendered(name)
    settings = gateway(objects).settings()
    assert settings.host == "0.0.0.0"
    check_bind(settings)  # raises without an admin token
    # Runners fetch functions through the admin API, so they carry the same token.
    assert runner(objects).env["WASMGATE_ADMIN_TOKEN"] == gateway(objects).env["WASMGATE_ADMIN_TOKEN"]
