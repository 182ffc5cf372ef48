"""Checks the deployment files. Used by the end-to-end tests (tests/e2e/deploy_files.rs).

    check_deploy.py k8s DIR VERSION...      every *.yaml in DIR
    check_deploy.py compose FILE SERVICE...  a docker-compose file, without Docker

`k8s`: each document of each manifest is validated with `kubernetes-validate` in strict mode
(unknown fields are errors) against each Kubernetes VERSION. A document whose kind has no schema
is an error, not a warning, with one exception: the kustomize `Kustomization`, which is not a
Kubernetes API object and is checked here instead (it must list exactly the other manifests).

`compose`: the file must parse (merge keys and anchors included), define every SERVICE, give each
service an image or a build, and refer in `depends_on` only to services it defines.

Both print one JSON line describing what they checked and exit 1 on any problem.
"""

import json
import pathlib
import sys

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


def k8s(directory, versions):
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
    if len(argv) >= 3 and argv[0] == "k8s":
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
