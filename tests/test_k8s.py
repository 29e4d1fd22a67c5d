"""Static checks of the KubeRay manifests in k8s/ and of cluster/Dockerfile (no cluster, no kubectl, no docker).

* Every RayCluster and RayJob, as written under k8s/base and as rendered by each overlay, validates
  against the KubeRay v1 CRD schema (../shared/reference/kuberay), made strict: an unknown field
  (a typo) is an error, as with `kubectl apply`'s default strict field validation.
* Overlays are rendered by a small kustomize subset implemented here (resources, JSON6902 `patches`
  from files, `images`); a kustomization using anything else fails, so the two cannot drift apart.
* Every RayJob entrypoint is parsed by the project's own CLI parser; the pipeline steps chain
  (train reads what simulate wrote, predict loads what train published) and fit their clusters.
* Security: no inline credentials, S3 secrets only through `envFrom` of the neutrino-ray-s3 Secret,
  Ray token authentication on.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import re
import shlex
from collections.abc import Iterator
from fractions import Fraction
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from neutrino_ray.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
CRD_DIR = Path(__file__).resolve().parents[2] / "shared" / "reference" / "kuberay"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
API_VERSION = "ray.io/v1"
S3_SECRET = "neutrino-ray-s3"
IMAGE_WORKDIR = "/home/ray/neutrino-ray"
AWS_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# Rendered kustomizations: (cluster kustomization, jobs kustomization) per environment.
ENVS = {"base": ("base", "base/jobs"), "dev": ("overlays/dev", "overlays/dev/jobs"),
        "prod": ("overlays/prod", "overlays/prod/jobs")}
KUSTOMIZATIONS = sorted({k for pair in ENVS.values() for k in pair})
OVERLAYS = [k for k in KUSTOMIZATIONS if k.startswith("overlays/")]


def load_all(path: Path) -> list[Any]:
    return [d for d in yaml.load_all(path.read_text(), Loader=Loader) if d is not None]


# --------------------------------------------------------------------------------------------------
# A kustomize subset: resources (files and directories), patches (JSON6902, from files) and images.


class RenderError(AssertionError):
    pass


KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "patches", "images"}
TARGET_KEYS = {"group", "version", "kind", "name"}
IMAGE_KEYS = {"name", "newName", "newTag", "digest"}


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise RenderError(f"JSON pointer must start with '/': {path!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def _child(node: Any, token: str, path: str) -> Any:
    if isinstance(node, dict):
        if token not in node:
            raise RenderError(f"{path}: no key {token!r}")
        return node[token]
    if isinstance(node, list):
        if not token.isdigit() or int(token) >= len(node):
            raise RenderError(f"{path}: no index {token!r} in a list of {len(node)}")
        return node[int(token)]
    raise RenderError(f"{path}: cannot descend into a {type(node).__name__}")


def json6902(doc: dict[str, Any], ops: list[dict[str, Any]]) -> None:
    """Apply RFC 6902 add/replace/remove/test operations to doc in place."""
    for op in ops:
        kind, path = op.get("op"), op.get("path", "")
        tokens = _pointer(path)
        parent = doc
        for t in tokens[:-1]:
            parent = _child(parent, t, path)
        last = tokens[-1]
        if kind == "test":
            if _child(parent, last, path) != op["value"]:
                raise RenderError(f"test failed at {path}: {_child(parent, last, path)!r} != {op['value']!r}")
        elif kind == "remove":
            _child(parent, last, path)
            del parent[int(last) if isinstance(parent, list) else last]
        elif kind == "replace":
            _child(parent, last, path)
            parent[int(last) if isinstance(parent, list) else last] = copy.deepcopy(op["value"])
        elif kind == "add":
            value = copy.deepcopy(op["value"])
            if isinstance(parent, dict):
                parent[last] = value
            elif isinstance(parent, list):
                if last == "-":
                    parent.append(value)
                elif last.isdigit() and int(last) <= len(parent):
                    parent.insert(int(last), value)
                else:
                    raise RenderError(f"{path}: bad list index for add")
            else:
                raise RenderError(f"{path}: cannot add into a {type(parent).__name__}")
        else:
            raise RenderError(f"JSON6902 op {kind!r} at {path} is not implemented by this test's renderer")


def split_image(ref: str) -> tuple[str, str | None, str | None]:
    """(name, tag, digest) of an image reference."""
    ref, _, digest = ref.partition("@")
    name, tag = ref, None
    if ":" in ref.rsplit("/", 1)[-1]:
        name, tag = ref.rsplit(":", 1)
    return name, tag, digest or None


def containers(node: Any) -> Iterator[dict[str, Any]]:
    """Every container anywhere in node (kustomize's images transformer walks the same way)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from (c for c in value if isinstance(c, dict))
            else:
                yield from containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from containers(item)


def set_images(docs: list[dict[str, Any]], images: list[dict[str, Any]]) -> None:
    for img in images:
        if set(img) - IMAGE_KEYS:
            raise RenderError(f"images: {sorted(set(img) - IMAGE_KEYS)} not implemented by this test's renderer")
        for c in (c for d in docs for c in containers(d)):
            if "image" not in c:
                continue
            name, tag, digest = split_image(c["image"])
            if name != img["name"]:
                continue
            name = img.get("newName", name)
            if "digest" in img:
                c["image"] = f"{name}@{img['digest']}"
            elif "newTag" in img:
                c["image"] = f"{name}:{img['newTag']}"
            else:
                c["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def _matches(doc: dict[str, Any], target: dict[str, Any]) -> bool:
    group, _, version = doc.get("apiVersion", "").rpartition("/")
    return (target.get("group", group) == group and target.get("version", version) == version
            and target.get("kind", doc.get("kind")) == doc.get("kind")
            and re.fullmatch(target.get("name", ".*"), doc.get("metadata", {}).get("name", "")) is not None)


def _inside(path: Path, root: Path) -> Path:
    path = path.resolve()
    if not path.is_relative_to(root.resolve()):  # kustomize's default load restrictor (RootOnly)
        raise RenderError(f"{path} is outside the kustomization root {root}")
    return path


def render(kdir: Path) -> list[dict[str, Any]]:
    """Render a kustomization directory (the subset above) to a list of resource documents."""
    kfile = kdir / "kustomization.yaml"
    k = yaml.load(kfile.read_text(), Loader=Loader)
    if set(k) - KUSTOMIZATION_KEYS:
        raise RenderError(f"{kfile}: {sorted(set(k) - KUSTOMIZATION_KEYS)} not implemented by this test's renderer")
    docs: list[dict[str, Any]] = []
    for res in k.get("resources", []):
        p = kdir / res
        if p.is_dir():
            docs += render(p)
        elif p.is_file():
            docs += load_all(_inside(p, kdir))
        else:
            raise RenderError(f"{kfile}: resource {res} not found")
    for patch in k.get("patches", []):
        if set(patch) != {"target", "path"} or set(patch["target"]) - TARGET_KEYS:
            raise RenderError(f"{kfile}: only patches with target ({sorted(TARGET_KEYS)}) and path are implemented")
        ops = yaml.load(_inside(kdir / patch["path"], kdir).read_text(), Loader=Loader)
        if not isinstance(ops, list):
            raise RenderError(f"{kdir / patch['path']}: not a JSON6902 operation list")
        targets = [d for d in docs if _matches(d, patch["target"])]
        if not targets:
            raise RenderError(f"{kfile}: patch {patch['path']} matches no resource ({patch['target']})")
        for d in targets:
            try:
                json6902(d, ops)
            except RenderError as e:
                raise RenderError(f"{kdir / patch['path']} on {d['kind']}/{d['metadata']['name']}: {e}") from None
    set_images(docs, k.get("images", []))
    return docs


@cache
def _rendered(rel: str) -> tuple[dict[str, Any], ...]:
    return tuple(render(K8S / rel))


def rendered(rel: str) -> list[dict[str, Any]]:
    return copy.deepcopy(list(_rendered(rel)))


def base_files() -> list[Path]:
    return sorted(p for p in (K8S / "base").rglob("*.yaml") if p.name != "kustomization.yaml")


def all_manifests() -> list[tuple[str, dict[str, Any]]]:
    """(where, document) for every base file document and every rendered overlay document."""
    out = [(str(p.relative_to(K8S)), d) for p in base_files() for d in load_all(p)]
    out += [(f"{rel} (rendered)", d) for rel in KUSTOMIZATIONS for d in rendered(rel)]
    return out


def cluster_specs(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]


def groups(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(name, group) for the head group and every worker group of a RayCluster spec."""
    return [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]


def ray_container(group: dict[str, Any]) -> dict[str, Any]:
    return group["template"]["spec"]["containers"][0]  # KubeRay: the Ray container is the first one


# --------------------------------------------------------------------------------------------------
# CRD schema → strict JSON Schema.


def crd_to_json_schema(node: Any) -> Any:
    """OpenAPI v3 structural schema of a CRD → JSON Schema, rejecting unknown fields.

    x-kubernetes-int-or-string → integer or string; nullable → also null; other x-kubernetes-* dropped;
    an object with `properties` gets additionalProperties: false unless it preserves unknown fields or
    already says what its additional properties are.
    """
    if isinstance(node, list):
        return [crd_to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key in ("properties", "patternProperties"):
            out[key] = {name: crd_to_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = crd_to_json_schema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [crd_to_json_schema(sub) for sub in value]
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable"):
        if "type" in out:
            out["type"] = [*([out["type"]] if isinstance(out["type"], str) else out["type"]), "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if "properties" in node and "additionalProperties" not in node \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def validators() -> dict[str, Any]:
    if not CRD_DIR.is_dir():
        pytest.skip("../shared/reference/kuberay not found: KubeRay CRD schemas are needed to validate k8s/ manifests")
    jsonschema = pytest.importorskip("jsonschema")
    out = {}
    for kind, fname in CRD_FILES.items():
        crd = yaml.load((CRD_DIR / fname).read_text(), Loader=Loader)
        assert crd["spec"]["names"]["kind"] == kind and crd["spec"]["group"] == "ray.io"
        (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schema = crd_to_json_schema(v1["schema"]["openAPIV3Schema"])
        jsonschema.Draft7Validator.check_schema(schema)
        out[kind] = jsonschema.Draft7Validator(schema)
    return out


def schema_errors(validators: dict[str, Any], doc: dict[str, Any]) -> list[str]:
    errors = sorted(validators[doc["kind"]].iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    return ["/" + "/".join(map(str, e.absolute_path)) + f": {e.message}" for e in errors]


# --------------------------------------------------------------------------------------------------
# Structure of k8s/.


def test_yaml_files_parse_and_have_known_kinds() -> None:
    files = sorted(K8S.rglob("*.yaml"))
    assert files, "no YAML under k8s/"
    for f in files:
        docs = load_all(f)
        assert docs, f"{f} is empty"
        rel = f.relative_to(K8S)
        if f.name == "kustomization.yaml":
            assert docs[0]["kind"] == "Kustomization"
        elif rel.parts[0] == "base":
            for d in docs:
                assert d["kind"] in CRD_FILES, f"{rel}: kind {d['kind']} (only RayCluster and RayJob belong in base)"
                assert d["apiVersion"] == API_VERSION, f"{rel}: apiVersion {d['apiVersion']}"
        elif rel.parts[0] == "overlays":
            assert isinstance(docs[0], list) and all(op.get("op") in ("add", "replace", "remove", "test")
                                                      for op in docs[0]), f"{rel}: not a JSON6902 patch"
        else:
            assert rel == Path("secret.example.yaml"), f"unexpected file {rel}"


def test_kustomizations_cover_base_and_leave_out_the_secret() -> None:
    listed: set[Path] = set()
    for kfile in K8S.rglob("kustomization.yaml"):
        for res in yaml.load(kfile.read_text(), Loader=Loader).get("resources", []):
            listed.add((kfile.parent / res).resolve())
    assert (K8S / "secret.example.yaml").resolve() not in listed, "secret.example.yaml must not be deployed"
    orphans = [str(p.relative_to(K8S)) for p in base_files() if p.resolve() not in listed]
    assert not orphans, f"base manifests in no kustomization: {orphans}"
    found = sorted(str(p.parent.relative_to(K8S)) for p in K8S.rglob("kustomization.yaml"))
    assert found == KUSTOMIZATIONS


def test_renderer_json6902_and_images() -> None:
    doc = {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "x"},
           "spec": {"a": [1, 2], "m": {"nvidia.com/gpu": "1"},
                    "c": {"containers": [{"name": "r", "image": "reg:5000/team/neutrino-ray:0.1.0-cpu"}]}}}
    json6902(doc, [{"op": "test", "path": "/spec/a/1", "value": 2},
                   {"op": "add", "path": "/spec/a/-", "value": 3}, {"op": "add", "path": "/spec/a/0", "value": 0},
                   {"op": "replace", "path": "/spec/m/nvidia.com~1gpu", "value": "2"},
                   {"op": "remove", "path": "/spec/a/1"}, {"op": "add", "path": "/spec/n", "value": {"k": 1}}])
    assert doc["spec"]["a"] == [0, 2, 3] and doc["spec"]["n"] == {"k": 1}
    assert doc["spec"]["m"] == {"nvidia.com/gpu": "2"}
    for bad in ({"op": "test", "path": "/spec/a/0", "value": 9}, {"op": "replace", "path": "/spec/zz", "value": 1},
                {"op": "remove", "path": "/spec/a/7"}, {"op": "move", "path": "/spec/a", "from": "/spec/n"}):
        with pytest.raises(RenderError):
            json6902(copy.deepcopy(doc), [bad])
    assert split_image("reg:5000/team/neutrino-ray:0.1.0-cpu") == ("reg:5000/team/neutrino-ray", "0.1.0-cpu", None)
    set_images([doc], [{"name": "reg:5000/team/neutrino-ray", "newName": "ghcr.io/o/nr", "newTag": "1.0-gpu"}])
    assert doc["spec"]["c"]["containers"][0]["image"] == "ghcr.io/o/nr:1.0-gpu"
    set_images([doc], [{"name": "other", "newTag": "9"}])
    assert doc["spec"]["c"]["containers"][0]["image"] == "ghcr.io/o/nr:1.0-gpu"
    assert _matches(doc, {"group": "ray.io", "version": "v1", "kind": "RayJob", "name": "x"})
    assert not _matches(doc, {"kind": "RayCluster"}) and not _matches(doc, {"kind": "RayJob", "name": "xy"})


@pytest.mark.parametrize("rel", KUSTOMIZATIONS)
def test_kustomization_renders(rel: str) -> None:
    docs = rendered(rel)
    assert docs and all(d["kind"] in CRD_FILES and d["apiVersion"] == API_VERSION for d in docs)
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), f"duplicate resources in {rel}: {names}"


# --------------------------------------------------------------------------------------------------
# Schema validation against the KubeRay CRDs.


@pytest.mark.parametrize("source", [str(p.relative_to(K8S)) for p in base_files()] + OVERLAYS)
def test_manifests_validate_against_kuberay_crds(validators: dict[str, Any], source: str) -> None:
    docs = rendered(source) if source in OVERLAYS else load_all(K8S / source)
    for doc in docs:
        assert doc["apiVersion"] == API_VERSION
        errors = schema_errors(validators, doc)
        assert not errors, f"{source}: {doc['kind']}/{doc['metadata']['name']}:\n" + "\n".join(errors)


def _a_rayjob() -> dict[str, Any]:
    return load_all(K8S / "base" / "jobs" / "icecube-train.yaml")[0]


@pytest.mark.parametrize("mutate, expect", [
    (lambda d: d["spec"].__setitem__("shutdownAfterJobFinish", True), "'shutdownAfterJobFinish' was unexpected"),
    (lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].__setitem__("minReplica", 0),
     "'minReplica' was unexpected"),
    (lambda d: ray_container(d["spec"]["rayClusterSpec"]["headGroupSpec"]).__setitem__(
        "envfrom", [{"secretRef": {"name": S3_SECRET}}]), "'envfrom' was unexpected"),
    (lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["volumes"][0]["emptyDir"]
     .__setitem__("size", "1Gi"), "'size' was unexpected"),
    (lambda d: d["spec"]["rayClusterSpec"]["authOptions"].__setitem__("mode", "tokens"), "is not one of"),
    (lambda d: d["spec"].__setitem__("backoffLimit", "2"), "is not of type 'integer'"),
    (lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"].__setitem__("num-cpus", 0),
     "is not of type 'string'"),
    (lambda d: ray_container(d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0])["resources"]["limits"]
     .__setitem__("memory", "lots"), "does not match"),
], ids=["rayjob-field", "worker-group-field", "container-field", "emptydir-field", "enum", "integer", "string-map",
        "quantity"])
def test_schema_rejects_typos_and_wrong_types(validators: dict[str, Any], mutate: Any, expect: str) -> None:
    doc = _a_rayjob()
    assert not schema_errors(validators, doc)
    mutate(doc)
    errors = schema_errors(validators, doc)
    assert any(expect in e for e in errors), errors


def test_schema_int_or_string_quantities(validators: dict[str, Any]) -> None:
    doc = _a_rayjob()
    limits = ray_container(doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][1])["resources"]["limits"]
    for value in (1, "1", "500m", "16Gi"):
        limits["nvidia.com/gpu"] = value
        assert not schema_errors(validators, doc), value
    limits["nvidia.com/gpu"] = 1.5
    assert schema_errors(validators, doc)


def test_kuberay_operator_validation_rules() -> None:
    """The operator's own checks (ray-operator/controllers/ray/utils/validation.go), which no schema carries."""
    dns1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
    for where, doc in all_manifests():
        name, spec = doc["metadata"]["name"], cluster_specs(doc)
        # The CRDs leave metadata open (the API server checks ObjectMeta itself): check its keys here.
        assert set(doc["metadata"]) <= {"name", "namespace", "labels", "annotations"}, f"{where}: metadata"
        limit = 53 if doc["kind"] == "RayCluster" else 47
        assert dns1035.fullmatch(name) and len(name) <= limit, f"{where}: name {name!r}"
        if spec.get("authOptions", {}).get("mode") == "token":
            assert tuple(map(int, spec["rayVersion"].split("."))) >= (2, 52, 0), f"{where}: token auth needs Ray 2.52+"
        for gname, g in groups(spec):
            if {"num-cpus", "num-gpus", "memory", "resources"} & set(g.get("rayStartParams", {})):
                assert not g.get("resources"), f"{where}: {gname}: resources in both rayStartParams and resources"
            assert "labels" not in g.get("rayStartParams", {}), f"{where}: {gname}: use the labels field"
            assert len(g["template"]["spec"]["containers"]) >= 1
            if gname != "head":
                assert g["minReplicas"] <= g.get("replicas", 0) <= g["maxReplicas"], f"{where}: {gname} replicas"
        if doc["kind"] == "RayJob":
            js = doc["spec"]
            assert js["shutdownAfterJobFinishes"] is True and js["ttlSecondsAfterFinished"] >= 0, where
            assert js["activeDeadlineSeconds"] > 0 and js["backoffLimit"] >= 0, where
            assert js["submissionMode"] in ("K8sJobMode", "HTTPMode", "SidecarMode"), where
            assert "deletionStrategy" not in js and "clusterSelector" not in js, where
            runtime_env = yaml.load(js["runtimeEnvYAML"], Loader=Loader)
            assert isinstance(runtime_env, dict), f"{where}: runtimeEnvYAML is not a mapping"
            assert all(isinstance(v, str) for v in runtime_env.get("env_vars", {}).values()), where


# --------------------------------------------------------------------------------------------------
# Entrypoints, parsed by the project's CLI.


@cache
def job_commands() -> dict[str, list[str]]:
    """jobs/<file>.py → the CLI words it runs, read from its `main([...])` call."""
    out = {}
    for f in sorted((ROOT / "jobs").glob("*.py")):
        m = re.search(r"main\(\[((?:\s*\"[\w-]+\",)+)\s*\*sys\.argv\[1:\]\]\)", f.read_text())
        assert m, f"{f}: no main([..., *sys.argv[1:]]) call"
        out[f"jobs/{f.name}"] = re.findall(r"\"([\w-]+)\"", m.group(1))
    return out


def parse_entrypoint(entrypoint: str) -> tuple[str, Any]:
    """(job file, parsed arguments) of a RayJob entrypoint `python jobs/<file>.py ARGS`."""
    words = shlex.split(entrypoint)
    assert len(words) >= 2 and words[0] == "python" and re.fullmatch(r"jobs/\w+\.py", words[1]), entrypoint
    assert (ROOT / words[1]).is_file(), f"{words[1]} does not exist"
    argv = [*job_commands()[words[1]], *words[2:]]
    sub = build_parser()
    for word in job_commands()[words[1]]:
        (choices,) = [a.choices for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
        sub = choices[word]
    known = {o for a in sub._actions for o in a.option_strings}
    for w in words[2:]:  # exact option names: an abbreviation parses today but may be ambiguous tomorrow
        assert not w.startswith("--") or w.split("=", 1)[0] in known, f"{entrypoint}: unknown option {w}"
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"`neutrino-ray {' '.join(argv)}` does not parse:\n{err.getvalue()}")
    return words[1], args


def rayjobs(rel: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in rendered(rel) if d["kind"] == "RayJob"}


EXPECTED_JOBS = {"icecube-simulate": "jobs/icecube_simulate.py", "icecube-train": "jobs/icecube_train.py",
                 "icecube-predict": "jobs/icecube_predict.py", "icecube-stats": "jobs/icecube_stats.py",
                 "nova-train": "jobs/nova_train.py",
                 "nova-predict": "jobs/nova_predict.py", "km3net-train": "jobs/km3net_train.py",
                 "km3net-predict": "jobs/km3net_predict.py"}


@pytest.mark.parametrize("env", ENVS)
def test_rayjob_entrypoints_parse_with_the_project_cli(env: str) -> None:
    jobs = rayjobs(ENVS[env][1])
    assert set(jobs) == set(EXPECTED_JOBS)
    for name, job in jobs.items():
        script, args = parse_entrypoint(job["spec"]["entrypoint"])
        assert script == EXPECTED_JOBS[name], f"{name} runs {script}"
        for key, value in vars(args).items():  # every location is an s3:// URI that every pod can reach
            if isinstance(value, str) and "/" in value:
                assert value.startswith("s3://"), f"{env}/{name}: --{key} {value} is not an s3:// URI"
        assert args.out.startswith("s3://"), name
        assert args.wait > 0, f"{env}/{name}: a retried RayJob overlapping its first attempt must --wait for its lease"


@pytest.mark.parametrize("env", ENVS)
def test_pipeline_steps_chain(env: str) -> None:
    a = {name: parse_entrypoint(job["spec"]["entrypoint"])[1] for name, job in rayjobs(ENVS[env][1]).items()}
    assert a["icecube-train"].data == a["icecube-simulate"].out == a["icecube-predict"].data == a["icecube-stats"].data
    assert a["icecube-predict"].model == [a["icecube-train"].out + "/model"]  # --model repeats (ensembles)
    assert a["nova-predict"].model == a["nova-train"].out + "/model"
    assert a["km3net-predict"].model == a["km3net-train"].out
    outs = [x.out for x in a.values()]
    assert len(outs) == len(set(outs)), f"two jobs write the same OUT: {outs}"


def quantity(q: Any) -> Fraction:
    """A Kubernetes quantity (cpu or bytes) as a number."""
    m = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(q))
    assert m, q
    mult = {"": 1, "m": Fraction(1, 1000), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
            "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}[m.group(2)]
    return Fraction(m.group(1)) * mult


@pytest.mark.parametrize("env", ENVS)
def test_entrypoint_resources_fit_their_cluster(env: str) -> None:
    for name, job in rayjobs(ENVS[env][1]).items():
        _, args = parse_entrypoint(job["spec"]["entrypoint"])
        workers = [(ray_container(g)["resources"]["limits"], g["maxReplicas"])
                   for _, g in groups(job["spec"]["rayClusterSpec"])[1:]]
        total_cpus = sum(quantity(lim["cpu"]) * n for lim, n in workers)
        gpu_pods = [(quantity(lim["cpu"]), int(lim["nvidia.com/gpu"]), n) for lim, n in workers
                    if "nvidia.com/gpu" in lim]
        if name == "km3net-train":
            n, cpus, gpus = args.workers, 1, 0  # one 1-CPU Ray task per trial
        elif hasattr(args, "gpus_per_worker"):
            n, cpus, gpus = args.workers, args.cpus_per_worker, args.gpus_per_worker
        elif hasattr(args, "gpus_per_actor") and args.model not in (None, "linefit"):
            n, cpus, gpus = args.actors, args.cpus_per_actor, args.gpus_per_actor
        else:
            continue
        # With autoscaling, the CLI's defaults (a share of the CPUs or GPUs present at start) see only the
        # pods already running: size the job explicitly so that Ray asks the autoscaler for the rest.
        assert n and cpus, f"{env}/{name}: give --workers/--actors and --cpus-per-worker/--cpus-per-actor"
        if gpus:
            assert gpu_pods, f"{env}/{name} asks for GPUs but its cluster has no GPU group"
            pod_cpu, pod_gpus, max_pods = gpu_pods[0]
            assert gpus <= pod_gpus and cpus <= pod_cpu, f"{env}/{name}: one worker does not fit a GPU pod"
            assert n * gpus <= pod_gpus * max_pods, f"{env}/{name}: {n} x {gpus} GPUs > the GPU group's maximum"
        else:
            assert any(cpus <= quantity(lim["cpu"]) for lim, _ in workers), f"{env}/{name}: {cpus} CPUs fit no pod"
        # Leave CPUs for Ray Data's read tasks next to the training workers or actors.
        assert n * cpus < total_cpus, f"{env}/{name}: {n} x {cpus} CPUs leave none of {total_cpus} for data tasks"
        if getattr(args, "max_minutes", None):
            assert args.max_minutes * 60 < job["spec"]["activeDeadlineSeconds"], f"{env}/{name}: budget > deadline"


# --------------------------------------------------------------------------------------------------
# Security.


def test_no_inline_credentials() -> None:
    for f in K8S.rglob("*.yaml"):
        if f.name == "secret.example.yaml":
            continue
        text = f.read_text()
        for var in (*AWS_CREDENTIALS, "RAY_AUTH_TOKEN"):
            assert not re.search(rf"{var}\W*\s*(value\s*:|[:=]\s*\S)", text), f"{f}: {var} set inline"
    for where, doc in all_manifests():
        for c in containers(doc):
            for e in c.get("env", []):
                secretish = e["name"] in AWS_CREDENTIALS or e["name"] == "RAY_AUTH_TOKEN"
                assert not (secretish and "value" in e), f"{where}: {c['name']} sets {e['name']} inline"
        if doc["kind"] == "RayJob":
            env_vars = yaml.load(doc["spec"]["runtimeEnvYAML"], Loader=Loader).get("env_vars", {})
            assert not set(env_vars) & set(AWS_CREDENTIALS), f"{where}: credentials in runtimeEnvYAML"


def test_secret_example_has_placeholders_only() -> None:
    (secret,) = load_all(K8S / "secret.example.yaml")
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == S3_SECRET
    data = secret["stringData"]
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_REGION"} <= set(data)
    for key in AWS_CREDENTIALS[:2]:
        assert re.fullmatch(r"<[^<>]+>", data[key]), f"{key} must be a <placeholder>, not a value"
    readme = (K8S / "README.md").read_text()
    assert re.search(rf"kubectl (-n \S+ )?create secret generic {S3_SECRET} ", readme) and "--from-literal" in readme


def test_ray_containers_read_s3_credentials_from_the_secret() -> None:
    for where, doc in all_manifests():
        for gname, g in groups(cluster_specs(doc)):
            c = ray_container(g)
            refs = [e.get("secretRef", {}).get("name") for e in c.get("envFrom", [])]
            assert S3_SECRET in refs, f"{where}: {gname} container {c['name']} lacks envFrom secretRef {S3_SECRET}"


def test_token_authentication_is_on() -> None:
    for where, doc in all_manifests():
        spec = cluster_specs(doc)
        assert spec.get("authOptions", {}).get("mode") == "token", f"{where}: authOptions.mode is not token"
        for c in containers(doc):
            for e in c.get("env", []):
                assert not (e["name"] == "RAY_AUTH_MODE" and e.get("value") != "token"), f"{where}: {e}"


# --------------------------------------------------------------------------------------------------
# Cluster shape.


def test_head_schedules_no_work_and_autoscaling_is_on() -> None:
    for where, doc in all_manifests():
        spec = cluster_specs(doc)
        assert spec["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0", f"{where}: head num-cpus"
        assert spec["enableInTreeAutoscaling"] is True, where
        assert spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0, where
        assert [n for n, _ in groups(spec)][:2] == ["head", "cpu"], where


def test_object_store_fits_in_shared_memory() -> None:
    for where, doc in all_manifests():
        for gname, g in groups(cluster_specs(doc)):
            pod, c = g["template"]["spec"], ray_container(g)
            (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == "/dev/shm"]
            (vol,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
            shm = vol["emptyDir"]
            assert shm["medium"] == "Memory", f"{where}: {gname} /dev/shm"
            store = quantity(g["rayStartParams"]["object-store-memory"])
            limits = c["resources"]["limits"]
            assert store <= quantity(shm["sizeLimit"]) < quantity(limits["memory"]), f"{where}: {gname} sizes"
            assert c["resources"]["requests"]["memory"] == limits["memory"], f"{where}: {gname} memory request"


@pytest.mark.parametrize("env", ENVS)
def test_job_clusters_share_the_shape_of_the_raycluster(env: str) -> None:
    (cluster,) = rendered(ENVS[env][0])
    for name, job in rayjobs(ENVS[env][1]).items():
        spec = job["spec"]["rayClusterSpec"]
        for key in ("rayVersion", "authOptions", "enableInTreeAutoscaling", "headGroupSpec", "workerGroupSpecs"):
            assert spec[key] == cluster["spec"][key], f"{env}/{name}: {key} differs from the RayCluster's"


def test_dev_overlay_is_cpu_only() -> None:
    for rel in ENVS["dev"]:
        for doc in rendered(rel):
            text = yaml.safe_dump(doc)
            assert "nvidia.com/gpu" not in text, f"{rel}: {doc['metadata']['name']} requests GPUs"
            assert [n for n, _ in groups(cluster_specs(doc))] == ["head", "cpu"]
            if doc["kind"] == "RayJob":
                _, args = parse_entrypoint(doc["spec"]["entrypoint"])
                assert not (getattr(args, "gpus_per_worker", 0) or getattr(args, "gpus_per_actor", 0))


def test_prod_overlay_has_gpus() -> None:
    for rel in ENVS["prod"]:
        for doc in rendered(rel):
            gpu = dict(groups(cluster_specs(doc)))["gpu"]
            limits = ray_container(gpu)["resources"]["limits"]
            assert int(limits["nvidia.com/gpu"]) >= 1 and gpu["maxReplicas"] >= 1, rel
            assert gpu["minReplicas"] == 0, f"{rel}: GPU pods should scale from zero"
            tolerations = gpu["template"]["spec"].get("tolerations", [])
            assert any(t["key"] == "nvidia.com/gpu" for t in tolerations), f"{rel}: no GPU toleration"
    jobs = rayjobs(ENVS["prod"][1])
    for name in ("icecube-train", "nova-train"):
        assert parse_entrypoint(jobs[name]["spec"]["entrypoint"])[1].gpus_per_worker >= 1, name
    for name in ("icecube-predict", "nova-predict"):
        assert parse_entrypoint(jobs[name]["spec"]["entrypoint"])[1].gpus_per_actor >= 1, name


def test_overlays_set_the_image() -> None:
    base_images = {split_image(c["image"])[0] for p in base_files() for d in load_all(p) for c in containers(d)}
    assert len(base_images) == 1, base_images
    for rel in OVERLAYS:
        k = yaml.load((K8S / rel / "kustomization.yaml").read_text(), Loader=Loader)
        (img,) = k["images"]
        assert img["name"] in base_images, f"{rel}: images[].name {img['name']} matches no base image"
        want = f"{img.get('newName', img['name'])}:{img['newTag']}"
        got = {c["image"] for d in rendered(rel) for c in containers(d)}
        assert got == {want}, f"{rel}: {got}"
        for d in rendered(rel):
            for c in containers(d):
                assert c.get("workingDir") == IMAGE_WORKDIR, f"{rel}: {c['name']} workingDir"
    for env in ("dev", "prod"):
        tags = {c["image"] for rel in ENVS[env] for d in rendered(rel) for c in containers(d)}
        assert len(tags) == 1, f"{env}: the cluster and the jobs use different images {tags}"
    assert all(t.endswith("-cpu") for d in rendered("overlays/dev") for t in [c["image"] for c in containers(d)])
    assert all(t.endswith("-gpu") for d in rendered("overlays/prod") for t in [c["image"] for c in containers(d)])


# --------------------------------------------------------------------------------------------------
# The image.


def test_ray_version_matches_project_and_dockerfile() -> None:
    pin = re.search(r"\"ray\[[^\]]*\]==([0-9.]+)\"", (ROOT / "pyproject.toml").read_text())
    assert pin, "ray pin not found in pyproject.toml"
    version = pin.group(1)
    for where, doc in all_manifests():
        assert cluster_specs(doc)["rayVersion"] == version, f"{where}: rayVersion != ray=={version}"
    dockerfile = (ROOT / "cluster" / "Dockerfile").read_text()
    assert re.search(rf"^ARG BASE=rayproject/ray:{re.escape(version)}-py311$", dockerfile, re.M)
    assert f"rayproject/ray:{version}-py311-gpu" in (ROOT / "cluster" / "README.md").read_text()


def test_dockerfile_installs_torch_then_the_project_at_the_workdir() -> None:
    lines = [ln.strip() for ln in (ROOT / "cluster" / "Dockerfile").read_text().splitlines()]
    code = [ln for ln in lines if ln and not ln.startswith("#")]
    assert code[0].startswith("ARG BASE=") and "FROM ${BASE}" in code
    text = "\n".join(code)
    assert "https://download.pytorch.org/whl/cpu" in text
    torch_at = text.index("torch==")
    project_at = text.index("pip install --no-cache-dir .")
    assert torch_at < project_at, "torch must be installed before the project"
    assert f"WORKDIR {IMAGE_WORKDIR}" in code
    assert re.search(r"^COPY .*\bjobs\b", text, re.M) and re.search(r"^COPY .*\bneutrino_ray\b", text, re.M)
    python_version = re.search(r"requires-python = \">=3\.(\d+)\"", (ROOT / "pyproject.toml").read_text())
    assert python_version and f"py3{python_version.group(1)}" in code[0]
