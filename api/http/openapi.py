"""The OpenAPI 3.1 document, generated from the routes and the pydantic schemas that validate them.

Registering a route takes one decorator, placed under the blueprint's route decorator::

    from api.http.openapi import operation

    @bp.get("/<evaluation_id>/heatmap.png")
    @operation("Accuracy over the grid as a picture", query=HeatmapQuery,
               responses={200: Reply("the heatmap", media_type="image/png"), 409: "not succeeded yet"})
    def heatmap(evaluation_id: str): ...

`body` names the JSON request schema, `form` the multipart fields (with `files` for the file
parts), `query` the query-string schema — the same classes the route passes to `api.http.schemas.parse`,
so the document cannot drift from what the API accepts. `responses` maps a status to a description
(an error status is answered as problem+json) or to a `Reply` with a response schema or media type.
Every `/v1` route also gets bearer auth and its 401; a path parameter adds a 404, a body, form or
query adds a 400. A `/v1` route without the decorator still appears, marked `x-undocumented`, and
the test suite rejects it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from flask import Flask
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

F = TypeVar("F", bound=Callable[..., Any])
REF = "#/components/schemas/{model}"
PROBLEM_JSON = "application/problem+json"
_PATH_ARG = re.compile(r"<(?:(?P<converter>\w+)(?:\([^)]*\))?:)?(?P<name>\w+)>")
_CONVERTER_TYPES = {"int": {"type": "integer"}, "float": {"type": "number"}}


@dataclass(frozen=True)
class Reply:
    """A documented response: its description, and a pydantic schema or a media type."""

    description: str
    schema: type[BaseModel] | None = None
    media_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)
    also: tuple[str, ...] = ()  # further media types the route can answer with, as text


@dataclass(frozen=True)
class Operation:
    """What the generator needs to know about one view function."""

    summary: str
    body: type[BaseModel] | None = None
    form: type[BaseModel] | None = None
    files: tuple[str, ...] = ()
    query: type[BaseModel] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    responses: Mapping[int, Reply | str] = field(default_factory=dict)
    tag: str | None = None
    auth: bool | None = None


def operation(summary: str, *, body: type[BaseModel] | None = None, form: type[BaseModel] | None = None,
              files: Sequence[str] = (), query: type[BaseModel] | None = None,
              headers: Mapping[str, str] | None = None, responses: Mapping[int, Reply | str] | None = None,
              tag: str | None = None, auth: bool | None = None) -> Callable[[F], F]:
    """Record a view's request schemas and responses for the OpenAPI document."""
    op = Operation(summary, body, form, tuple(files), query, dict(headers or {}), dict(responses or {}), tag, auth)

    def record(view: F) -> F:
        view.openapi_operation = op  # type: ignore[attr-defined]
        return view

    return record


PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details; `errors` lists field problems.",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {"type": "array", "items": {
            "type": "object", "required": ["field", "message"],
            "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
        }},
    },
}


def _problem(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}}


def _openapi_path(rule: str) -> tuple[str, list[dict[str, Any]]]:
    params = [
        {"name": m["name"], "in": "path", "required": True,
         "schema": _CONVERTER_TYPES.get(m["converter"] or "", {"type": "string"})}
        for m in _PATH_ARG.finditer(rule)
    ]
    return _PATH_ARG.sub(lambda m: "{" + m["name"] + "}", rule), params


def _collect_models(ops: list[Operation]) -> tuple[dict[tuple[type[BaseModel], str], Any], dict[str, Any]]:
    pairs: set[tuple[type[BaseModel], str]] = set()
    for op in ops:
        pairs.update((m, "validation") for m in (op.body, op.form, op.query) if m is not None)
        pairs.update((r.schema, "serialization") for r in op.responses.values()
                     if isinstance(r, Reply) and r.schema is not None)
    refs, top = models_json_schema(sorted(pairs, key=lambda p: (p[0].__name__, p[1])), ref_template=REF)
    return refs, top.get("$defs", {})


def _inline(ref: Any, schemas: Mapping[str, Any]) -> dict[str, Any]:
    """The schema a `$ref` points at (query and form fields are listed one by one)."""
    return schemas[ref["$ref"].rsplit("/", 1)[1]] if "$ref" in ref else ref


def _query_params(model: type[BaseModel], refs: Mapping, schemas: Mapping[str, Any]) -> list[dict[str, Any]]:
    schema = _inline(refs[(model, "validation")], schemas)
    required = set(schema.get("required", []))
    params = []
    for name, prop in schema.get("properties", {}).items():
        param = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if "description" in prop:
            param["description"] = prop["description"]
        params.append(param)
    return params


def _form_body(op: Operation, refs: Mapping, schemas: Mapping[str, Any]) -> dict[str, Any]:
    schema = dict(_inline(refs[(op.form, "validation")], schemas)) if op.form else {"type": "object"}
    properties = dict(schema.get("properties", {}))
    # An object field of a multipart body travels as JSON text (OpenAPI's default encoding).
    for name in op.files:
        properties[name] = {"type": "string", "format": "binary"}
    schema.pop("title", None)
    schema.update(properties=properties, required=[*op.files, *schema.get("required", [])])
    return {"required": True, "content": {"multipart/form-data": {"schema": schema}}}


def _responses(op: Operation, refs: Mapping, secured: bool, has_path_args: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status, reply in sorted(op.responses.items()):
        if isinstance(reply, str) and status >= 400:
            out[str(status)] = _problem(reply)
            continue
        if isinstance(reply, str):
            reply = Reply(reply)
        entry: dict[str, Any] = {"description": reply.description}
        if reply.schema is not None:
            entry["content"] = {reply.media_type: {"schema": refs[(reply.schema, "serialization")]}}
        elif status != 204:
            entry["content"] = {reply.media_type: {"schema": {}}}
        for media_type in reply.also:
            entry.setdefault("content", {})[media_type] = {"schema": {"type": "string"}}
        if reply.headers:
            entry["headers"] = {name: {"description": text, "schema": {"type": "string"}}
                                for name, text in reply.headers.items()}
        out[str(status)] = entry
    defaults = {}
    if op.body or op.form or op.query or op.headers:
        defaults["400"] = _problem("the request is malformed: the problem's `errors` name each bad field")
    if secured:
        defaults["401"] = _problem("missing or unknown bearer token")
    if has_path_args:
        defaults["404"] = _problem("no such resource for this tenant")
    if op.query:
        # gunicorn answers an over-long request line itself, before Flask (so not as problem+json).
        defaults["414"] = {"description": "the URL is longer than the server accepts (4094 bytes)"}
    if op.form:
        defaults["413"] = _problem("the upload is larger than SHIFTSCORE_MAX_UPLOAD_BYTES")
    if op.body:
        defaults["413"] = _problem("the JSON body is larger than SHIFTSCORE_MAX_JSON_BYTES")
    for status, entry in defaults.items():
        out.setdefault(status, entry)
    return dict(sorted(out.items()))


def _undocumented(view: Callable[..., Any]) -> Operation:
    summary = (view.__doc__ or view.__name__).strip().splitlines()[0]
    return Operation(summary, responses={200: Reply("success")})


def _routes(app: Flask) -> list[tuple[Any, Any, bool]]:
    """(rule, operation, undocumented) of every route to document: decorated ones and every /v1 route."""
    entries = []
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: (r.rule, sorted(r.methods or ()))):
        if rule.endpoint.rsplit(".", 1)[-1] == "static":  # static files, the app's or a blueprint's
            continue
        view = app.view_functions[rule.endpoint]
        op = getattr(view, "openapi_operation", None)
        if op is None and not rule.rule.startswith("/v1"):
            continue
        entries.append((rule, op or _undocumented(view), op is None))
    return entries


def build_openapi(app: Flask) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route of `app` (the static files aside)."""
    entries = _routes(app)
    refs, schemas = _collect_models([op for _, op, _ in entries])
    schemas["Problem"] = PROBLEM_SCHEMA
    paths: dict[str, dict[str, Any]] = {}
    for rule, op, undocumented in entries:
        path, params = _openapi_path(rule.rule)
        secured = op.auth if op.auth is not None else rule.rule.startswith("/v1")
        params += [{"name": name, "in": "header", "required": False, "description": text,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 200}}
                   for name, text in op.headers.items()]
        if op.query:
            params += _query_params(op.query, refs, schemas)
        spec: dict[str, Any] = {
            "operationId": rule.endpoint.replace(".", "_"),
            "summary": op.summary,
            "tags": [op.tag or rule.endpoint.split(".", 1)[0]],
            "parameters": params,
            "responses": _responses(op, refs, secured, bool(rule.arguments)),
        }
        if op.body:
            spec["requestBody"] = {"required": True,
                                   "content": {"application/json": {"schema": refs[(op.body, "validation")]}}}
        elif op.form or op.files:
            spec["requestBody"] = _form_body(op, refs, schemas)
        spec["security"] = [{"bearerAuth": []}] if secured else []
        if undocumented:
            spec["x-undocumented"] = True
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = spec
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ShiftScore REST API",
            "version": "1",
            "description": "Translation-robustness sweeps for image models: upload a model and a "
                           "dataset, ask for a shift sweep, read per-shift accuracy, consistency "
                           "and worst-case scores. Pixels are divided by 255 to [0, 1] before a "
                           "model's mean/std normalization. Every metric, with its formula and "
                           "source, is defined at /docs/metrics. Every list answers `items` and "
                           "`next_cursor` (null on the last page); pass it back as `cursor`. "
                           "Errors are application/problem+json (RFC 9457).",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearerAuth": {
                "type": "http", "scheme": "bearer",
                "description": "a tenant's token from 'shiftscore token create TENANT'",
            }},
        },
    }
