#!/usr/bin/env bash
# Builds the four images (mover, scheduler, gc, prewarm) from one build stage of
# docker/Dockerfile, tagged with the names and tag of kustomize/app/kustomization.yaml
# (the one place where they are set).
#   bash scripts/build-images.sh            # build
#   bash scripts/build-images.sh --push     # build and push
#   REGISTRY=registry.lan/stowage bash scripts/build-images.sh --push
set -euo pipefail
cd "$(dirname "$0")/.."
engine="${CONTAINER_ENGINE:-docker}"
push=false
[ "${1:-}" = "--push" ] && push=true

# name/newTag pairs of the images: list in the kustomization.
mapfile -t entries < <(awk '/^images:/ {on=1; next} on && /^  - name:/ {name=$3} on && /newTag:/ {print name " " $2}' \
  kustomize/app/kustomization.yaml)
[ ${#entries[@]} -eq 4 ] || { echo "expected 4 images in kustomize/app/kustomization.yaml" >&2; exit 2; }
for e in "${entries[@]}"; do
  read -r name tag <<<"$e"
  program="${name##*/stowage-}"
  repo="$name"
  [ -n "${REGISTRY:-}" ] && repo="$REGISTRY/stowage-$program"
  echo "building $repo:$tag (target $program)"
  DOCKER_BUILDKIT=1 "$engine" build -f docker/Dockerfile --target "$program" -t "$repo:$tag" .
  if $push; then "$engine" push "$repo:$tag"; fi
done
