"""A strict JSON Schema of KServe's InferenceService, read from KServe's published Python SDK.

KServe's SDK (``kserve`` on PyPI, Apache-2.0) and the Kubernetes client it builds on are
generated from the same OpenAPI definitions as KServe's CRD: every model class lists its
fields (``openapi_types``: python name -> type, ``attribute_map``: python name -> JSON
name), its required fields (setters that refuse ``None``) and its enums (``allowed_values``).
This module reads those class bodies as data (``ast``; nothing of the SDK is imported, so its
dependencies, which conflict with tritonclient's protobuf, are not needed) and writes one
JSON Schema with ``additionalProperties: false`` on every object, so an unknown or misspelt
field fails, which the API server would silently prune.

The SDK files are installed without dependencies into a folder of their own
(``.ci/setup`` does this)::

    pip install --no-deps --target .venv/share/tritonfleet/kserve-sdk kserve==0.21.0 kubernetes==37.0.2

``TRITONFLEET_KSERVE_SDK`` names another folder.
"""

from __future__ import annotations

import ast
import os
import re
import sys
from functools import cache
from pathlib import Path
from typing import Any

from tritonfleet.clients.errors import MissingDependencyError

KSERVE_SDK = "kserve==0.21.0"
KUBERNETES_SDK = "kubernetes==37.0.2"   # the client the KServe SDK models refer to (PodSpec, Container, ...)
ROOT_TYPE = "V1beta1InferenceService"
_PRIMITIVES = {"str": {"type": "string"}, "int": {"type": "integer"}, "float": {"type": "number"},
               "bool": {"type": "boolean"}, "object": {}, "datetime": {"type": "string"}, "date": {"type": "string"},
               # quantities have no model class of their own
               "ResourceQuantity": {"type": ["string", "number"]}, "V1beta1MetricQuantity": {"type": ["string", "number"]}}
_REQUIRED = re.compile(r"Invalid value for `(\w+)`, must not be `None`")


def sdk_folder() -> Path:
    return Path(os.environ.get("TRITONFLEET_KSERVE_SDK") or Path(sys.prefix) / "share" / "tritonfleet" / "kserve-sdk")


def _install_hint(folder: Path) -> str:
    return f"pip install --no-deps --target {folder} {KSERVE_SDK} {KUBERNETES_SDK}"


def _module_name(type_name: str) -> str:
    # V1beta1ModelSpec -> v1beta1_model_spec, KnativeURL -> knative_url
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", type_name).lower()


def _model_file(folder: Path, type_name: str) -> tuple[Path, str]:
    """The file defining ``type_name`` and the class name in it. KServe names some Kubernetes types
    by their full Go path (``K8sIoApiAppsV1DeploymentStrategy``): the client calls it ``V1DeploymentStrategy``."""
    names = [type_name]
    full_path = re.match(r"^K8sIoApi(?:[A-Z][a-z]+)*?(V\d+(?:alpha\d+|beta\d+)?[A-Z]\w*)$", type_name)
    if full_path:
        names.append(full_path.group(1))
    for name in names:
        for package in ("kserve/models", "kubernetes/client/models"):
            path = folder / package / f"{_module_name(name)}.py"
            if path.is_file():
                return path, name
    raise MissingDependencyError(f"the KServe schema check cannot find the SDK model '{type_name}' under {folder}; "
                                 f"install the SDK there: {_install_hint(folder)}")


def _class_facts(path: Path, type_name: str) -> tuple[dict[str, str], dict[str, str], set[str], dict[str, list]]:
    """(openapi_types, attribute_map, required python names, enums) of one generated model class.

    Two generator styles occur: classic classes (KServe's models; required fields are setters
    raising on ``None``, enums an ``allowed_values`` list) and pydantic ones (newer Kubernetes
    clients; a field is required when its annotation is not ``Optional[...]``)."""
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path))
    cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == type_name), None)
    if cls is None:
        raise MissingDependencyError(f"{path} does not define {type_name}; reinstall the SDK: "
                                     f"{_install_hint(path.parents[2])}")
    tables: dict[str, dict[str, str]] = {}
    enums: dict[str, list] = {}
    fields: dict[str, bool] = {}   # pydantic style: python name -> required
    for node in cls.body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else getattr(
            node, "target", None)
        if isinstance(target, ast.Name) and target.id in ("openapi_types", "attribute_map") and node.value is not None:
            tables[target.id] = ast.literal_eval(node.value)
        elif isinstance(node, ast.AnnAssign) and isinstance(target, ast.Name):
            annotation = ast.unparse(node.annotation)
            if not annotation.startswith("ClassVar"):
                fields[target.id] = not annotation.startswith("Optional[")
        if isinstance(node, ast.FunctionDef):
            for inner in ast.walk(node):
                if (isinstance(inner, ast.Assign) and isinstance(inner.targets[0], ast.Name)
                        and inner.targets[0].id == "allowed_values" and isinstance(inner.value, ast.List)):
                    enums[node.name] = ast.literal_eval(inner.value)
    required = set(_REQUIRED.findall(ast.get_source_segment(source, cls) or ""))
    required |= {name for name, needed in fields.items() if needed}
    return tables.get("openapi_types", {}), tables.get("attribute_map", {}), required, enums


def _type_schema(type_text: str, pending: list[str]) -> dict[str, Any]:
    type_text = type_text.strip()
    if type_text in _PRIMITIVES:
        return dict(_PRIMITIVES[type_text])
    for prefix in ("list[", "List["):
        if type_text.startswith(prefix) and type_text.endswith("]"):
            return {"type": "array", "items": _type_schema(type_text[5:-1], pending)}
    for prefix, end in (("dict(", ")"), ("Dict[", "]")):
        if type_text.startswith(prefix) and type_text.endswith(end):
            _key, _, value = type_text[5:-1].partition(",")
            return {"type": "object", "additionalProperties": _type_schema(value, pending)}
    pending.append(type_text)
    return {"$ref": f"#/definitions/{type_text}"}


@cache
def _schema_for(folder: str) -> dict[str, Any]:
    definitions: dict[str, Any] = {}
    pending = [ROOT_TYPE]
    while pending:
        name = pending.pop()
        if name in definitions:
            continue
        types, names, required, enums = _class_facts(*_model_file(Path(folder), name))
        properties = {}
        for attr, type_text in types.items():
            if name == ROOT_TYPE and attr == "status":   # written by the controller, never by a user
                properties["status"] = {"type": "object"}
                continue
            prop = _type_schema(type_text, pending)
            if attr in enums and prop.get("type") == "string":
                prop["enum"] = enums[attr]
            properties[names.get(attr, attr)] = prop
        definitions[name] = {"type": "object", "properties": properties, "additionalProperties": False,
                             "required": sorted(names.get(a, a) for a in required)}
    root = dict(definitions[ROOT_TYPE])
    root["properties"] = {**root["properties"], "apiVersion": {"const": "serving.kserve.io/v1beta1"},
                          "kind": {"const": "InferenceService"}}
    root["required"] = sorted({*root["required"], "apiVersion", "kind", "metadata", "spec"})
    return {"$schema": "http://json-schema.org/draft-07/schema#", **root, "definitions": definitions}


def inference_service_schema(folder: Path | None = None) -> dict[str, Any]:
    """The strict JSON Schema of ``serving.kserve.io/v1beta1`` InferenceService."""
    folder = Path(folder) if folder else sdk_folder()
    if not (folder / "kserve" / "models").is_dir():
        raise MissingDependencyError(f"checking an InferenceService needs KServe's SDK models in {folder}: "
                                     f"{_install_hint(folder)}")
    return _schema_for(str(folder))


def validate_inference_service(obj: dict[str, Any], folder: Path | None = None) -> list[str]:
    """Problems of ``obj`` against the schema: ``spec.predictor.model.storageUri: 3 is not of type 'string'``."""
    import jsonschema

    validator = jsonschema.Draft7Validator(inference_service_schema(folder))
    problems = []
    for error in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in error.absolute_path) or "(top)"
        problems.append(f"{where}: {error.message}")
    return problems
