#!/usr/bin/env bash
# Renders every overlay with kustomize and validates the output offline: against the
# Kubernetes schemas (kubernetes-validate, strict) and against the project's own rules
# (restricted pod security, no service-account tokens, probes, resources). Any failure exits
# non-zero. Needs kubectl (for `kubectl kustomize`) and `pip install kubernetes-validate`.
set -euo pipefail
cd "$(dirname "$0")"
version="${KUBERNETES_VERSION:-1.30.0}"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# The dashboard and the alert rules only use metrics the binaries export.
python3 check_metrics.py grafana/era5-dashboard.json prometheus/era5-alerts.yaml
for overlay in overlays/*/; do
    name=$(basename "$overlay")
    kubectl kustomize "$overlay" > "$out/$name.yaml"
    kubernetes-validate --strict --quiet --kubernetes-version "$version" "$out/$name.yaml"
    python3 check_policies.py "$out/$name.yaml"
    echo "deploy: $name renders and validates ($(grep -c '^kind:' "$out/$name.yaml") objects)"
done
