"""Every number a client can send is bounded in the OpenAPI document (and so checked before
anything runs): no unbounded integer or float in any request body, form or query."""

from __future__ import annotations

from service.app import create_app
from service.settings import Settings


def unbounded_numbers(spec: dict) -> list[str]:
    schemas = spec["components"]["schemas"]
    found: list[str] = []

    def walk(schema: dict, path: str, seen: frozenset) -> None:
        if "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[-1]
            if name not in seen:
                walk(schemas[name], name, seen | {name})
            return
        for key in ("anyOf", "oneOf", "allOf"):
            for option in schema.get(key, []):
                walk(option, path, seen)
        if schema.get("type") in ("integer", "number") and not {"maximum", "exclusiveMaximum", "enum"} & set(schema):
            found.append(path)
        for name, child in schema.get("properties", {}).items():
            walk(child, f"{path}.{name}", seen)
        if isinstance(schema.get("items"), dict):
            walk(schema["items"], f"{path}[]", seen)
        for child in schema.get("prefixItems", []):
            walk(child, f"{path}[]", seen)

    for route, operations in spec["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                walk(parameter["schema"], f"{method} {route} ?{parameter['name']}", frozenset())
            for content in operation.get("requestBody", {}).get("content", {}).values():
                walk(content["schema"], f"{method} {route}", frozenset())
    return found


def test_no_number_a_client_sends_is_unbounded(tmp_path):
    spec = create_app(Settings(data_dir=tmp_path)).openapi()
    assert unbounded_numbers(spec) == [
        # mean and std: floats checked by the upload itself (|mean| <= 10, 0 < std <= 10)
        "Body_upload_model_v1_models_post.mean[]", "Body_upload_model_v1_models_post.std[]"]
