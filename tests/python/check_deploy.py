"""Checks the deployment files. Used by the end-to-end tests (tests/e2e/deploy_files.rs).

    check_deploy.py k8s DIR VERSION...      every *.yaml in DIR
    check_deploy.py k8s DIR --crds SCHEMAS VERSION...
                                             the same, custom resources included
    check_deploy.py compose FILE SERVICE...  a docker-compose file, without Docker

`k8s`: each document of each manifest is validated with `kubernetes-validate` in strict mode
(unknown fields are errors) against each Kubernetes VERSION. A document whose kind has no schema
is an error, not a warning, with one exception: the kustomize `Kustomization`, which is not a
Kubernetes API object and is checked here instead (it must list exactly the other manifests).
With `--crds SCHEMAS`, a custom resource is validated against the openAPIV3 schema of its CRD
vendored in SCHEMAS (JSON files `{group, version, kind, openAPIV3Schema}`), as strictly: every
object schema that lists its properties and neither sets `additionalProperties` nor
`x-kubernetes-preserve-unknown-fields` refuses fields it does not list, as the API server's
pruning would drop them. CEL rules (`x-kubernetes-validations`) are not evaluated.

`compose`: the file must parse (merge keys and anchors included), define every SERVICE, give each
service an image or a build, and refer in `depends_on` only to services it defines.

Both print one JSON line describing what they checked and exit 1 on any problem.
"""

import json
import pathlib
import sys

import jsonschema
import yaml
from kubernetes_validate import utils as kv

KUSTOMIZE_API = "kustomize.config.k8s.io/v1beta1"


def check_kustomization(path, doc, manifests):
    problems = []
    resources = doc.get("resources") or []
    listed = set()
    for r in resources:
        if not (path.parent / r).is_file():
            problems.append("%s lists %s, which does not exist" % (path.name, r))
        listed.add(r)
    unlisted = sorted(set(manifests) - {path.name} - listed)
    if unlisted:
        problems.append("%s does not list %s" % (path.name, ", ".join(unlisted)))
    for image in doc.get("images") or []:
        if not image.get("name"):
            problems.append("%s: an images entry has no name" % path.name)
    return problems


def strict(schema):
    """The CRD schema with unknown fields refused wherever the API server would prune them."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def load_crds(directory):
    """{(apiVersion, kind): (validator, source file)} of the vendored CRD schemas."""
    crds = {}
    for path in sorted(pathlib.Path(directory).glob("*.json")):
        crd = json.loads(path.read_text(encoding="utf-8"))
        schema = strict(crd["openAPIV3Schema"])
        api_version = "%s/%s" % (crd["group"], crd["version"])
        validator = jsonschema.Draft7Validator(schema)
        crds[(api_version, crd["kind"])] = (validator, path.name)
    return crds


def check_custom(what, doc, crd):
    validator, source = crd
    problems = []
    for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.path)):
        where = ".".join(str(p) for p in e.path) or "(root)"
        problems.append("%s against %s at %s: %s" % (what, source, where, e.message))
    if not (doc.get("metadata") or {}).get("name"):
        problems.append("%s: metadata.name is missing" % what)
    return problems


def k8s(directory, versions, crds=None):
    directory = pathlib.Path(directory)
    manifests = sorted(p.name for p in directory.glob("*.yaml")) + sorted(
        p.name for p in directory.glob("*.yml")
    )
    if not manifests:
        return {"files": [], "problems": ["no manifests in %s" % directory]}
    checked, problems = [], []
    for name in manifests:
        path = directory / name
        try:
            docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
        except yaml.YAMLError as e:
            problems.append("%s: not YAML: %s" % (name, e))
            continue
        if not docs:
            problems.append("%s: no documents" % name)
        for doc in docs:
            kind = doc.get("kind")
            what = "%s %s/%s" % (name, kind, (doc.get("metadata") or {}).get("name"))
            if kind == "Kustomization" and doc.get("apiVersion") == KUSTOMIZE_API:
                problems += check_kustomization(path, doc, manifests)
                checked.append({"file": name, "kind": kind, "validator": "kustomization"})
                continue
            crd = (crds or {}).get((doc.get("apiVersion"), kind))
            if crd is not None:
                problems += check_custom(what, doc, crd)
                checked.append({"file": name, "kind": kind, "validator": "crd", "schema": crd[1]})
                continue
            for version in versions:
                try:
                    got = kv.validate(doc, version, strict=True)
                except kv.ValidationError as e:
                    where = ".".join(str(p) for p in e.path) or "(root)"
                    problems.append("%s against %s at %s: %s" % (what, version, where, e.message))
                except Exception as e:  # noqa: BLE001 - no schema, bad version: all failures
                    detail = getattr(e, "message", None) or str(e)
                    problems.append(
                        "%s against %s: %s: %s" % (what, version, type(e).__name__, detail)
                    )
                else:
                    checked.append({"file": name, "kind": kind, "version": got})
    return {"files": manifests, "checked": checked, "problems": problems}


def compose(path, required):
    problems = []
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    services = doc.get("services") if isinstance(doc, dict) else None
    if not isinstance(services, dict):
        return {"services": [], "problems": ["%s has no services mapping" % path]}
    for name in required:
        if name not in services:
            problems.append("service %s is missing" % name)
    for name, svc in services.items():
        if not isinstance(svc, dict):
            problems.append("service %s is not a mapping" % name)
            continue
        if not (svc.get("image") or svc.get("build")):
            problems.append("service %s has neither image nor build" % name)
        deps = svc.get("depends_on") or []
        for dep in deps if isinstance(deps, list) else deps.keys():
            if dep not in services:
                problems.append("service %s depends on unknown service %s" % (name, dep))
    return {"services": sorted(services), "problems": problems}


def main(argv):
    if len(argv) >= 5 and argv[0] == "k8s" and argv[2] == "--crds":
        report = k8s(argv[1], argv[4:], load_crds(argv[3]))
    elif len(argv) >= 3 and argv[0] == "k8s":
        report = k8s(argv[1], argv[2:])
    elif len(argv) >= 2 and argv[0] == "compose":
        report = compose(argv[1], argv[2:])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(report))
    for p in report["problems"]:
        print(p, file=sys.stderr)
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
