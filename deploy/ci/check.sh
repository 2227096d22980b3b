#!/usr/bin/env bash
# Deploy checks (run by `make deploy-check`, which puts the pinned tools of deploy/ci/requirements.txt on
# PATH): every kustomization renders with `kubectl kustomize`, validates offline against the Kubernetes
# schemas (kubernetes-validate --strict), passes checkov (skips are justified in the manifests'
# checkov.io/skip annotations), and every Dockerfile passes hadolint.
set -euo pipefail
cd "$(dirname "$0")/../.."

KUBERNETES_VERSION="${KUBERNETES_VERSION:-1.37.0}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
# Every directory with a kustomization, components excluded (they render inside the overlays using them).
targets=(deploy/k8s/models deploy/k8s/overlays/*)

failed=0
step() { printf '%-64s' "$1"; }
for dir in "${targets[@]}"; do
  name="$(echo "${dir#deploy/k8s/}" | tr / -)"
  rendered="$out/$name.yaml"
  step "render    $dir"
  if ! kubectl kustomize "$dir" > "$rendered" 2> "$out/$name.err"; then
    echo FAIL; cat "$out/$name.err"; failed=1; continue
  fi
  echo "ok ($(grep -c '^kind:' "$rendered") resources)"
  step "validate  $dir (Kubernetes $KUBERNETES_VERSION)"
  if kubernetes-validate --strict --quiet --kubernetes-version "$KUBERNETES_VERSION" "$rendered" > "$out/$name.val" 2>&1; then
    echo ok
  else
    echo FAIL; cat "$out/$name.val"; failed=1
  fi
  step "checkov   $dir"
  # --skip-download: offline, no platform account; the policies ship with checkov.
  if checkov --quiet --compact --skip-download --framework kubernetes -f "$rendered" > "$out/$name.ckv" 2>&1; then
    echo "ok ($(sed -n 's/.*Passed checks: \([0-9]*\).*Skipped checks: \([0-9]*\).*/\1 passed, \2 skipped/p' "$out/$name.ckv" | head -1))"
  else
    echo FAIL; cat "$out/$name.ckv"; failed=1
  fi
done

for dockerfile in deploy/docker/Dockerfile.*; do
  case "$dockerfile" in *.dockerignore) continue ;; esac
  step "hadolint  $dockerfile"
  if hadolint "$dockerfile" > "$out/hadolint.txt" 2>&1; then echo ok; else echo FAIL; cat "$out/hadolint.txt"; failed=1; fi
done

if [ "$failed" -ne 0 ]; then
  echo "deploy checks: FAILED" >&2
  exit 1
fi
echo "deploy checks: all passed"
