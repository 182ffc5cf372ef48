"""Validates JSON documents against the message schemas in proto-schemas/.

Used by the end-to-end tests (tests/e2e/compat.rs). Reads one JSON object on stdin:

    {"schemaDir": "/path/to/proto-schemas",
     "items": [{"schema": "dispatch.requested.schema.json", "label": "...", "body": "<raw JSON text>"}]}

Every `*.schema.json` in schemaDir is checked against the draft 2020-12 metaschema and registered
under its `$id`, so relative `$ref`s between them resolve locally (nothing is fetched). Each item's
body must parse as JSON and validate against its schema, with format checking on (`uuid`,
`date-time`, `uri` are enforced). Prints one JSON line with the number of documents validated per
schema and exits 1 if any document is invalid (2 on bad input or a broken schema).
"""

import json
import pathlib
import sys

from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource

# Formats the schemas use; without their checker jsonschema would accept any string.
REQUIRED_FORMATS = ("uuid", "date-time", "uri")


def load_schemas(schema_dir):
    schemas = {}
    for path in sorted(pathlib.Path(schema_dir).glob("*.schema.json")):
        schema = json.loads(path.read_text(encoding="utf-8"))
        Draft202012Validator.check_schema(schema)
        if not schema.get("$id", "").endswith("/" + path.name):
            raise ValueError("%s: $id must end with its file name" % path.name)
        schemas[path.name] = schema
    if not schemas:
        raise ValueError("no *.schema.json in %s" % schema_dir)
    registry = Registry().with_resources(
        (schema["$id"], Resource.from_contents(schema)) for schema in schemas.values()
    )
    return schemas, registry


def main():
    try:
        req = json.load(sys.stdin)
        schemas, registry = load_schemas(req["schemaDir"])
        items = req["items"]
        checker = FormatChecker()
        missing = [f for f in REQUIRED_FORMATS if f not in checker.checkers]
        if missing:
            raise RuntimeError("format checkers unavailable (missing packages?): %s" % missing)
    except Exception as e:  # noqa: BLE001
        print("setup failed: %s: %s" % (type(e).__name__, e), file=sys.stderr)
        return 2

    validators = {
        name: Draft202012Validator(schema, registry=registry, format_checker=checker)
        for name, schema in schemas.items()
    }
    counts = {}
    failures = []
    # Each schema's own examples must be valid too (a schema and its documentation agree).
    examples = 0
    for name, schema in schemas.items():
        for i, example in enumerate(schema.get("examples", [])):
            for e in validators[name].iter_errors(example):
                failures.append("%s examples[%d]: %s" % (name, i, e.message))
            examples += 1
    for item in items:
        name, label = item["schema"], item.get("label", "?")
        validator = validators.get(name)
        if validator is None:
            failures.append("%s: no schema named %s" % (label, name))
            continue
        try:
            doc = json.loads(item["body"])
        except ValueError as e:
            failures.append("%s: body is not JSON: %s" % (label, e))
            continue
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
        for e in errors:
            where = "/".join(str(p) for p in e.absolute_path) or "(root)"
            failures.append("%s against %s at %s: %s" % (label, name, where, e.message))
        if not errors:
            counts[name] = counts.get(name, 0) + 1

    print(json.dumps({"validated": counts, "examples": examples, "failures": len(failures)}))
    for f in failures:
        print(f, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
