#!/usr/bin/env bash
# Renders every overlay with kustomize and validates the output offline: against the
# Kubernetes schemas (kubernetes-validate, strict; cert-manager's and approver-policy's kinds,
# which it does not know, are checked field by field by check_policies.py) and against the project's own rules
# (restricted pod security, no service-account tokens, probes, resources, Redis memory and
# ACL, disruption budgets, and mTLS in prod: see check_policies.py). Any failure exits
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
    python3 - "$out/$name.yaml" "$out/$name.core.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
core = [d for d in docs if not d["apiVersion"].startswith(("cert-manager.io/", "policy.cert-manager.io/"))]
yaml.safe_dump_all(core, open(sys.argv[2], "w"), sort_keys=False)
PY
    kubernetes-validate --strict --quiet --kubernetes-version "$version" "$out/$name.core.yaml"
    # prod runs mTLS end to end; dev opts into plaintext inside its namespace.
    if [ "$name" = prod ]; then
        python3 check_policies.py "$out/$name.yaml" --tls --self-test
    else
        python3 check_policies.py "$out/$name.yaml"
    fi
    echo "deploy: $name renders and validates ($(grep -c '^kind:' "$out/$name.yaml") objects)"
done
# The scheduler examples (Indexed Job, Slurm array, Argo Workflow): schemas, pod rules, and
# era5's exit statuses mapped to retries.
KUBERNETES_VERSION="$version" examples/check.sh
