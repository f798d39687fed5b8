"""Generates the TradingStrategy CRD from the pydantic models.

`make crds` writes the output to crds/; a test fails when the committed file drifts
from what this module produces. Run as `python -m phasegate.api.crd`.
"""

from __future__ import annotations

import copy
import sys
from typing import Annotated, Any, get_args, get_origin

import yaml
from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import JsonSchemaMode

from . import contract
from .spec import StrategySpec
from .status import StrategyStatus

# Keys pydantic emits that a structural CRD schema does not allow or does not need.
_DROP = {"title", "$defs", "discriminator"}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """Inline $refs and turn pydantic's JSON Schema into a structural OpenAPI v3 schema."""
    if isinstance(node, list):
        return [_resolve(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].split("/")[-1]]
        merged = {**copy.deepcopy(target), **{k: v for k, v in node.items() if k != "$ref"}}
        return _resolve(merged, defs)
    if "anyOf" in node:
        # Optional[X] comes out as anyOf [X, null]: the CRD expresses optional by omission.
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) == 1:
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            if rest.get("default", ...) is None:
                rest.pop("default")
            return _resolve({**options[0], **rest}, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "enum" and "type" not in node:
            out["type"] = "string"
        if key == "const":
            out["enum"] = [value]
            continue
        if key == "properties":
            out[key] = {k: _resolve(v, defs) for k, v in value.items()}
        elif key == "additionalProperties" and isinstance(value, dict):
            out[key] = _resolve(value, defs)
        elif key == "additionalProperties" and value is False:
            continue  # structural schemas refuse unknown fields by pruning / strict validation
        elif key in ("items", "anyOf", "allOf", "oneOf", "not"):
            out[key] = _resolve(value, defs)
        else:
            out[key] = value
    if out.get("type") in ("number", "integer") and isinstance(out.get("default"), str):
        # pydantic writes Decimal defaults as strings; a number field needs a number
        num = float(out["default"])
        out["default"] = int(num) if out["type"] == "integer" or num.is_integer() else num
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out.setdefault("x-kubernetes-preserve-unknown-fields", True)
    return out


def _schema(model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode=mode)
    defs = raw.pop("$defs", {})
    resolved: dict[str, Any] = _resolve(raw, defs)
    return resolved


def _model_in(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The pydantic model inside Optional[M] / list[M] / M, and whether it is a list."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    origin = get_origin(annotation)
    if origin is Annotated:
        return _model_in(get_args(annotation)[0])
    for arg in get_args(annotation):
        model, _ = _model_in(arg)
        if model is not None:
            return model, origin is list
    return None, False


def _add_factory_defaults(model: type[BaseModel], node: dict[str, Any]) -> None:
    """pydantic leaves default_factory values out of JSON Schema; the CRD needs them."""
    for name, field in model.model_fields.items():
        prop = node.get("properties", {}).get(field.alias or name)
        if prop is None:
            continue
        if field.default_factory is not None:
            assert field.annotation is not None, name
            value = field.get_default(call_default_factory=True)
            prop["default"] = TypeAdapter(field.annotation).dump_python(
                value, mode="json", by_alias=True, exclude_none=True
            )
        sub, is_list = _model_in(field.annotation)
        if sub is not None:
            _add_factory_defaults(sub, prop["items"] if is_list else prop)


def _strip_defaults(node: Any) -> Any:
    """Status defaults are the operator's business, not the apiserver's."""
    if isinstance(node, dict):
        return {k: _strip_defaults(v) for k, v in node.items() if k != "default"}
    if isinstance(node, list):
        return [_strip_defaults(n) for n in node]
    return node


def openapi_schema() -> dict[str, Any]:
    spec = _schema(StrategySpec, "validation")
    # The apiserver stores the defaults with the object, so the plan a strategy was
    # deployed with does not change under it when an upgraded operator has new defaults.
    _add_factory_defaults(StrategySpec, spec)
    status = _strip_defaults(_schema(StrategyStatus, "serialization"))
    status.pop("required", None)
    return {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def crd() -> dict[str, Any]:
    ready = '.status.conditions[?(@.type=="Ready")]'
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{contract.PLURAL}.{contract.GROUP}",
            "labels": {"app.kubernetes.io/name": "phasegate", "app.kubernetes.io/part-of": "phasegate"},
        },
        "spec": {
            "group": contract.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": contract.KIND,
                "listKind": f"{contract.KIND}List",
                "plural": contract.PLURAL,
                "singular": contract.SINGULAR,
                "shortNames": contract.SHORT_NAMES,
                "categories": ["phasegate", "all"],
            },
            "versions": [
                {
                    "name": contract.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {"name": "State", "type": "string", "jsonPath": ".status.state"},
                        {"name": "Fraction", "type": "string", "jsonPath": ".status.capitalFraction"},
                        {"name": "Ready", "type": "string", "jsonPath": f"{ready}.status"},
                        {"name": "Reason", "type": "string", "jsonPath": f"{ready}.reason"},
                        {"name": "Ceiling", "type": "number", "jsonPath": ".spec.maxFraction", "priority": 1},
                        {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


def render() -> str:
    header = "# Generated by `make crds` from operator/phasegate/api (pydantic models). Do not edit.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=120)


if __name__ == "__main__":
    sys.stdout.write(render())
