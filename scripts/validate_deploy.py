"""Render every kustomization under deploy/ and validate every object, offline.

    python scripts/validate_deploy.py [DIR...]     (default: every kustomization in deploy/)

- Rendering: kustomize built from its Go module (scripts/tools.sh path kustomize).
- Built-in kinds: the Kubernetes JSON schemas shipped in the kubernetes-validate
  wheel, strict (an unknown field is an error), for Kubernetes ``K8S_VERSION``.
- Custom resources (Flux, Argo CD, prometheus-operator, Strimzi): the
  openAPIV3Schema of their CustomResourceDefinition, from the projects' own
  packages at the versions pinned in scripts/crds.lock (scripts/tools.sh path
  crds), made strict the way the API server prunes: an object schema with
  ``properties`` and no ``x-kubernetes-preserve-unknown-fields`` takes no
  other key.

Each problem is printed as ``DIR: Kind/name: path.to.field: message``; the exit
status is 1 when there is any. Components (kind: Component) are rendered
through the overlays that use them.
"""

from __future__ import annotations

import copy
import functools
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
K8S_VERSION = "1.32.0"

__all__ = ["K8S_VERSION", "Problem", "kustomizations", "render", "tool", "validate_object",
           "validate_dir"]


@dataclass(frozen=True)
class Problem:
    where: str  # the kustomization directory (or file) rendered
    obj: str  # Kind/name
    path: str  # dotted path of the field, "" for the object
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.obj}: {self.path or '(object)'}: {self.message}"


@functools.cache
def tool(name: str) -> str:
    """Path of a tool of scripts/tools.sh (built on first use)."""
    result = subprocess.run(["bash", str(REPO / "scripts" / "tools.sh"), "path", name],
                            capture_output=True, text=True, timeout=1800, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"scripts/tools.sh path {name} failed:\n{result.stderr}")
    return result.stdout.strip().splitlines()[-1]


def kustomizations(root: Path = DEPLOY) -> list[Path]:
    """Every directory with a kustomization.yaml that is not a Component."""
    found = []
    for file in sorted(root.rglob("kustomization.yaml")):
        if yaml.safe_load(file.read_text()).get("kind") != "Component":
            found.append(file.parent)
    return found


def render(directory: Path) -> list[dict[str, Any]]:
    """``kustomize build DIRECTORY`` as objects; raises RuntimeError with kustomize's words."""
    result = subprocess.run([tool("kustomize"), "build", str(directory)], capture_output=True,
                            text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"kustomize build {directory}: {result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


# ---------------------------------------------------------------- custom resources


def _strict(schema: Any) -> Any:
    """A CRD's structural schema as JSON Schema, strict like the API server's pruning."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()
           if k not in ("x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string",
                        "nullable", "x-kubernetes-embedded-resource")}
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if schema.get("x-kubernetes-embedded-resource"):
        # apiVersion, kind and metadata are implied for an embedded object.
        props = out.setdefault("properties", {})
        for key in ("apiVersion", "kind"):
            props.setdefault(key, {"type": "string"})
        props.setdefault("metadata", {"type": "object"})
    if (out.get("type") == "object" and "properties" in out
            and "additionalProperties" not in out
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> JSON Schema, from every pinned CRD."""
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for file in sorted(Path(tool("crds")).glob("*.yaml")):
        for crd in yaml.safe_load_all(file.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if not version.get("served", True):
                    continue
                schema = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
                schema.setdefault("properties", {}).setdefault("metadata", {"type": "object"})
                schemas[(f"{group}/{version['name']}", kind)] = schema
    return schemas


def _path(parts: Iterable[Any]) -> str:
    return ".".join(str(p) for p in parts)


def validate_object(obj: dict[str, Any], where: str = "") -> list[Problem]:
    """Every problem of one object against its schema (built-in or custom resource)."""
    import jsonschema

    name = f"{obj.get('kind', '?')}/{(obj.get('metadata') or {}).get('name', '?')}"
    key = (obj.get("apiVersion", ""), obj.get("kind", ""))
    custom = crd_schemas().get(key)
    if custom is not None:
        validator = jsonschema.Draft7Validator(custom)
        return [Problem(where, name, _path(e.absolute_path), e.message)
                for e in sorted(validator.iter_errors(obj), key=lambda e: list(e.path))]
    validator = builtin_validator(*key)
    if validator is None:
        return [Problem(where, name, "", f"no schema for {key[0]} {key[1]}: not a Kubernetes "
                        f"{K8S_VERSION} kind, and no CRD pinned in scripts/crds.lock")]
    return [Problem(where, name, _path(e.absolute_path), e.message)
            for e in sorted(validator.iter_errors(obj), key=lambda e: list(e.path))]


@functools.cache
def builtin_validator(api_version: str, kind: str) -> Any:
    """A validator of the strict Kubernetes schema of a built-in kind, from the schemas
    shipped in kubernetes-validate (as its ``validate`` loads them), or None."""
    import re

    import jsonschema
    from kubernetes_validate.utils import major_minor, schema_contents
    from referencing import Registry, Resource

    version = K8S_VERSION.rsplit(".", 1)[0] + ".0"
    schema_dir = f"kubernetes-json-schema/v{version}-local-strict"
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    try:
        schema = schema_contents(f"{schema_dir}/{kind.lower()}-{group_version}.json",
                                 major_minor(version))
    except FileNotFoundError:
        return None
    definitions = schema_contents(f"{schema_dir}/_definitions.json", major_minor(version))
    registry = Resource.from_contents(schema) @ Registry()
    registry = Resource.from_contents(definitions) @ registry
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate_dir(directory: Path) -> tuple[list[dict[str, Any]], list[Problem]]:
    """Render ``directory`` and validate what it renders."""
    where = str(directory.relative_to(REPO)) if directory.is_relative_to(REPO) else str(directory)
    try:
        objects = render(directory)
    except RuntimeError as exc:
        return [], [Problem(where, "-", "", str(exc))]
    problems = [p for obj in objects for p in validate_object(obj, where)]
    return objects, problems


def main(argv: list[str]) -> int:
    dirs = [Path(a).resolve() for a in argv] or kustomizations()
    count = 0
    bad: list[Problem] = []
    for directory in dirs:
        objects, problems = validate_dir(directory)
        count += len(objects)
        bad += problems
    for problem in bad:
        print(problem)
    print(f"{len(dirs)} kustomization(s), {count} object(s), {len(bad)} problem(s)")
    return 1 if bad else 0




if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
