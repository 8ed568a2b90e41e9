#!/usr/bin/env python3
"""Project rules for rendered manifests, beyond the schema: every pod runs under the
"restricted" Pod Security Standard, mounts no service-account token, has probes and resource
requests and limits; every workload has a PodDisruptionBudget; the namespace enforces
"restricted"; a default-deny NetworkPolicy exists. Prints every violation; exits 1 if any."""

import sys

import yaml

WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}


def check(docs):
    problems = []
    kinds = {}
    for doc in docs:
        kinds.setdefault(doc["kind"], []).append(doc)
    for ns in kinds.get("Namespace", []):
        labels = ns["metadata"].get("labels", {})
        if labels.get("pod-security.kubernetes.io/enforce") != "restricted":
            problems.append(f"namespace {ns['metadata']['name']} does not enforce restricted")
    if not any(p["spec"].get("podSelector") == {} and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
               for p in kinds.get("NetworkPolicy", [])):
        problems.append("no default-deny NetworkPolicy")
    for account in kinds.get("ServiceAccount", []):
        if account.get("automountServiceAccountToken") is not False:
            problems.append(f"serviceaccount {account['metadata']['name']} mounts a token")
    budgets = [b["spec"]["selector"]["matchLabels"] for b in kinds.get("PodDisruptionBudget", [])]
    for kind in WORKLOADS:
        for workload in kinds.get(kind, []):
            name = f"{kind.lower()}/{workload['metadata']['name']}"
            pod = workload["spec"]["template"]["spec"]
            labels = workload["spec"]["template"]["metadata"].get("labels", {})
            if pod.get("automountServiceAccountToken") is not False:
                problems.append(f"{name}: mounts a service-account token")
            security = pod.get("securityContext", {})
            if security.get("runAsNonRoot") is not True:
                problems.append(f"{name}: runAsNonRoot is not true")
            if security.get("seccompProfile", {}).get("type") != "RuntimeDefault":
                problems.append(f"{name}: seccomp profile is not RuntimeDefault")
            if workload["spec"].get("replicas", 1) > 1 and not any(
                    all(labels.get(k) == v for k, v in selector.items()) for selector in budgets):
                problems.append(f"{name}: no PodDisruptionBudget")
            for container in pod.get("containers", []) + pod.get("initContainers", []):
                where = f"{name}/{container['name']}"
                ctx = container.get("securityContext", {})
                if ctx.get("allowPrivilegeEscalation") is not False:
                    problems.append(f"{where}: allowPrivilegeEscalation is not false")
                if ctx.get("readOnlyRootFilesystem") is not True:
                    problems.append(f"{where}: root filesystem is writable")
                if ctx.get("capabilities", {}).get("drop") != ["ALL"]:
                    problems.append(f"{where}: capabilities are not all dropped")
                for probe in ("livenessProbe", "readinessProbe"):
                    if probe not in container:
                        problems.append(f"{where}: no {probe}")
                resources = container.get("resources", {})
                if "requests" not in resources or "memory" not in resources.get("limits", {}):
                    problems.append(f"{where}: no resource requests or memory limit")
    return problems


def main():
    with open(sys.argv[1]) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    problems = check(docs)
    for problem in problems:
        print(f"{sys.argv[1]}: {problem}", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
