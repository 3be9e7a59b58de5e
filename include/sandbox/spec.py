"""Mirakl's official seller OpenAPI spec as a validator for requests and answers.

Requests are validated strictly: that is the contract Mirakl enforces. Answers are
validated against a relaxed copy of the spec, because the spec's own examples do not
validate against its schemas (``../shared/reference/mirakl-api.md``). The relaxation is
small and explicit, so a wrong type, a misspelt field or a wrong enum still fails:

* ``null`` is accepted for exactly those properties that hold ``null`` somewhere in the
  spec's own response examples (found by walking every example against its schema);
* ``null`` is also accepted where the spec's descriptions say a field is null at some
  stage (:data:`DOCUMENTED_NULLABLE`: the customer's addresses before shipping);
* the required fields in :data:`OMITTABLE_REQUIRED` may be missing (real answers and the
  spec's examples omit them);
* additional properties stay allowed, as the spec itself allows them.

Both copies are also made a little *stricter* where the spec's schemas are looser than its
own documentation: a string whose description lists ``Enum: `"A"`, `"B"` `` gets that enum
(many of Mirakl's enums live only in descriptions, e.g. TL02 ``type``), and a query
parameter documented as "a comma-separated list" of an enum accepts such a list, checked
item by item (the schema alone would reject ``SHIPPING,SHIPPED``). Binary contents
(``format: binary``: the multipart ``file`` of STO01/PRI01, the CSV of STO03/OF51) are
opaque bytes to the validator, which checks only that they are present.

The spec (2.6 MB) is loaded once, lazily. Its ``/dynamic-url/`` placeholder paths (OF54,
OR15, TL05 ...) declare no path parameters and are dropped; spec self-validation is
switched off because one parameter's default lies outside its own enum.
"""
from __future__ import annotations

import copy
import json
import os
import re
import threading
from pathlib import Path
from typing import Any, Iterable

from openapi_core import Config, OpenAPI
from openapi_core.testing import MockRequest, MockResponse

# A copy of Mirakl's official MMP seller spec (the contract), kept in the repository.
SPEC_PATH = Path(__file__).resolve().parents[1] / "config" / "reference" / "mirakl-mmp-seller-openapi.json"
SERVER_URL = "https://your-instance.mirakl.net"

# Required fields that real answers (and the spec's own examples) leave out, per schema
# component. Kept short on purpose: everything else the spec requires must be present.
OMITTABLE_REQUIRED: dict[str, frozenset[str]] = {
    # deprecated camel-case twin of payment_type
    "OR11_Response_200_Orders": frozenset({"paymentType"}),
    # only sent on marketplaces with commission VAT / tax calculation rules configured
    "OR11_Response_200_Orders_OrderLines": frozenset({"commission_rate_vat", "commission_vat"}),
    "OR11_Response_200_Orders_OrderLines_Refunds": frozenset({"refund_state"}),
    "OR11_Response_200_Orders_OrderLines_Taxes": frozenset({"tax_calculation_rule"}),
    "OR11_Response_200_Orders_OrderLines_ShippingTaxes": frozenset({"tax_calculation_rule"}),
    "OR12_Response_200": frozenset({"paymentType"}),
}

# "Null before shipping (or acceptance, depending on platform setting)." say the descriptions.
DOCUMENTED_NULLABLE: dict[str, frozenset[str]] = {
    "OR11_Response_200_Orders_Customer": frozenset({"billing_address", "shipping_address"}),
    "OR12_Response_200_Customer": frozenset({"billing_address", "shipping_address"}),
}

_lock = threading.Lock()
_cache: dict[str, Any] = {}


def spec_path() -> Path:
    """Where the official spec lives (overridable with ``MIRAKL_SPEC_PATH``)."""
    return Path(os.environ.get("MIRAKL_SPEC_PATH", SPEC_PATH))


def raw_spec() -> dict:
    """The spec as published, without the ``/dynamic-url/`` placeholder paths."""
    with _lock:
        if "raw" not in _cache:
            with open(spec_path(), encoding="utf-8") as fh:
                spec = json.load(fh)
            _cache["dynamic"] = {op["operationId"]: op for p, v in spec["paths"].items()
                                 if p.startswith("/dynamic-url/") for op in v.values() if isinstance(op, dict)}
            spec["paths"] = {p: v for p, v in spec["paths"].items() if not p.startswith("/dynamic-url/")}
            _cache["raw"] = spec
        return _cache["raw"]


def _strict() -> OpenAPI:
    with _lock:
        if "strict" not in _cache:
            spec = copy.deepcopy(_cache["raw"])
            _document_enums(spec)
            _cache["strict"] = OpenAPI.from_dict(spec, config=Config(spec_validator_cls=None))
        return _cache["strict"]


def _relaxed() -> OpenAPI:
    with _lock:
        if "relaxed" not in _cache:
            spec = copy.deepcopy(_cache["raw"])
            _document_enums(spec)
            _cache["nullable"] = _relax(spec)
            _cache["relaxed_components"] = spec["components"]
            _cache["relaxed"] = OpenAPI.from_dict(spec, config=Config(spec_validator_cls=None))
        return _cache["relaxed"]


def nullable_fields() -> set[tuple[str, str]]:
    """(schema location, property) pairs where ``null`` is accepted in answers."""
    raw_spec()
    _relaxed()
    return set(_cache["nullable"])


def operations() -> dict[str, tuple[str, str]]:
    """operationId -> (HTTP method, path template)."""
    out: dict[str, tuple[str, str]] = {}
    for path, item in raw_spec()["paths"].items():
        for method, op in item.items():
            if isinstance(op, dict) and "operationId" in op:
                out[op["operationId"]] = (method.upper(), path)
    return out


def response_example(operation_id: str, status: str = "200", prefer: str = "-0") -> Any:
    """A deep copy of one of the spec's response examples (business values preferred)."""
    method, path = operations()[operation_id]
    responses = raw_spec()["paths"][path][method.lower()]["responses"]
    content = next(iter(responses[status]["content"].values()))
    examples = content.get("examples", {})
    key = next((k for k in examples if k.endswith(prefer)), None) or next(iter(examples))
    return copy.deepcopy(examples[key]["value"])


# Documented constraints -----------------------------------------------------------------
_ENUM_IN_DESCRIPTION = re.compile(r"Enum:\s*((?:`\"[^`]*\"`\s*,?\s*)+)")


def _document_enums(node: Any) -> None:
    """Enums stated only in descriptions become schema enums; documented CSV lists are allowed."""
    if isinstance(node, list):
        for item in node:
            _document_enums(item)
        return
    if not isinstance(node, dict):
        return
    if node.get("in") == "query" and "comma-separated" in node.get("description", "").lower():
        schema = node.get("schema", {})
        if schema.get("type") == "string" and schema.get("enum"):
            choice = "|".join(re.escape(v) for v in schema.pop("enum"))
            schema["pattern"] = f"^({choice})(,({choice}))*$"
    if node.get("format") == "binary":
        # openapi-core hands binary contents over as bytes, which no JSON type matches.
        node.pop("type", None)
        node.pop("items", None)
        return
    described = node.get("description")
    if node.get("type") == "string" and "enum" not in node and isinstance(described, str):
        found = _ENUM_IN_DESCRIPTION.search(described)
        if found:
            node["enum"] = re.findall(r'`"([^`]*)"`', found.group(1))
    for value in node.values():
        if isinstance(value, (dict, list)):
            _document_enums(value)


# Relaxation ---------------------------------------------------------------------------
def _relax(spec: dict) -> set[tuple[str, str]]:
    schemas = spec["components"]["schemas"]
    nullable: set[tuple[str, str]] = set()
    for item in spec["paths"].values():
        for op in item.values():
            if not isinstance(op, dict):
                continue
            for response in op.get("responses", {}).values():
                for content in response.get("content", {}).values():
                    schema = content.get("schema")
                    for example in content.get("examples", {}).values():
                        if schema is not None:
                            _walk(schema, example.get("value"), "inline", schemas, nullable, set())
    for name, fields in DOCUMENTED_NULLABLE.items():
        props = schemas[name]["properties"]
        for field in fields:
            if (name, field) not in nullable:
                nullable.add((name, field))
                props[field] = {"anyOf": [props[field], {"type": "null"}]}
    for name, fields in OMITTABLE_REQUIRED.items():
        schema = schemas[name]
        schema["required"] = [f for f in schema.get("required", []) if f not in fields]
    return nullable


def _walk(schema: dict, value: Any, where: str, schemas: dict, nullable: set, seen: set) -> None:
    """Make each property that an example sets to ``null`` accept ``null``."""
    if "$ref" in schema:
        where = schema["$ref"].rsplit("/", 1)[-1]
        schema = schemas[where]
    for key in ("allOf", "anyOf", "oneOf"):
        for sub in schema.get(key, []):
            _walk(sub, value, where, schemas, nullable, seen)
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name, item in value.items():
            prop = props.get(name)
            if prop is None:
                continue
            if item is None:
                if (where, name) not in nullable:
                    nullable.add((where, name))
                    props[name] = {"anyOf": [prop, {"type": "null"}]}
            else:
                _walk(prop, item, where if "$ref" not in prop else "", schemas, nullable, seen)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            if item is not None:
                _walk(schema["items"], item, where, schemas, nullable, seen)


# Validation -----------------------------------------------------------------------------
def _errors(exc: Exception) -> list[str]:
    """Flatten an openapi-core exception into short messages, without echoing bodies."""
    out: list[str] = []
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        schema_errors = getattr(current, "schema_errors", None)
        if schema_errors:
            for error in _leaves(schema_errors):
                where = "/".join(str(p) for p in error.absolute_path) or "(root)"
                out.append(f"{where}: {error.message[:200]}")
            continue
        cause = current.__cause__ or current.__context__
        if cause is not None and cause is not current:
            stack.append(cause)
            continue
        out.append(f"{type(current).__name__}: {str(current)[:300]}")
    return out or [f"{type(exc).__name__}"]


def _leaves(errors: Iterable) -> Iterable:
    for error in errors:
        if error.context:
            yield from _leaves(error.context)
        else:
            yield error


def validate_request(
    method: str,
    path: str,
    query: dict[str, list[str]] | None = None,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    content_type: str = "application/json",
) -> list[str]:
    """Violations of the strict spec by one request; empty when it conforms."""
    raw_spec()
    request = MockRequest(
        SERVER_URL, method, path,
        args={k: list(v) if isinstance(v, (list, tuple)) else [v] for k, v in (query or {}).items()},
        headers=dict(headers or {}), data=body or b"", content_type=content_type or "application/json",
    )
    try:
        _strict().validate_request(request)
    except Exception as exc:  # openapi-core raises many unrelated exception types
        return _errors(exc)
    return []


def validate_download(operation_id: str, query: dict[str, list[str]] | None, headers: dict[str, str]) -> list[str]:
    """Violations of a download from a URL a status call answered (OF54, OR15, TL05).

    Their placeholder paths cannot be routed, so the query parameters the placeholder declares
    are checked by hand: required ones present, integers parse; and the API key is sent.
    """
    raw_spec()
    operation = _cache["dynamic"].get(operation_id)
    if operation is None:
        return [f"{operation_id} is not a download operation of the spec"]
    errors = [] if headers.get("Authorization") else ["Authorization header missing"]
    query = query or {}
    for param in operation.get("parameters", []):
        if param.get("in") != "query":
            continue
        values = query.get(param["name"]) or []
        if param.get("required") and not values:
            errors.append(f"query parameter {param['name']} is required")
        if param.get("schema", {}).get("type") == "integer" and any(not v.lstrip("-").isdigit() for v in values):
            errors.append(f"query parameter {param['name']} must be an integer")
    # other parameters are allowed: they come with the URL Mirakl gave (OF53's examples carry ?file=)
    return errors


def validate_file_items(component: str, items: Iterable[Any], sample: int = 50) -> list[str]:
    """Violations of the items of an export file against the relaxed schema of one item.

    Export files (TL05, OF54) are downloaded from the URL the status call answers; the spec
    documents them only under a placeholder path, so they are validated item by item against
    the component their placeholder names (the first ``sample`` items: files are large).
    """
    from openapi_schema_validator import OAS31Validator

    raw_spec()
    _relaxed()
    validator = OAS31Validator({"$ref": f"#/components/schemas/{component}",
                                "components": _cache["relaxed_components"]})
    errors: list[str] = []
    for index, item in enumerate(items):
        if index >= sample:
            break
        for error in validator.iter_errors(item):
            where = "/".join(str(p) for p in error.absolute_path)
            errors.append(f"item {index} {where}: {error.message}"[:300])
    return errors


def validate_response(
    method: str,
    path: str,
    status: int,
    body: bytes | str | Any,
    content_type: str = "application/json",
) -> list[str]:
    """Violations of the relaxed spec by one answer; empty when it conforms."""
    raw_spec()
    if not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode("utf-8")
    request = MockRequest(SERVER_URL, method, path)
    response = MockResponse(body, status_code=status, content_type=content_type.split(";")[0].strip())
    try:
        _relaxed().validate_response(request, response)
    except Exception as exc:
        return _errors(exc)
    return []
