#!/usr/bin/env python3
"""Project rules for rendered manifests, beyond the schema: every pod runs under the
"restricted" Pod Security Standard, mounts no service-account token, has probes and resource
requests and limits; every workload has a PodDisruptionBudget; the namespace enforces
"restricted"; a default-deny NetworkPolicy exists.

era5's own rules:
- Redis: maxmemory below its container's memory limit, with noeviction; its own
  PodDisruptionBudget; the default user off and the era5 ACL user (keys era5:*) from the
  shared ACL file; the coordinator connects as that user.
- Workers: fsGroupChangePolicy OnRootMismatch; their budget lets unhealthy pods go.
- The coordinator serves either mTLS (all three ERA5_TLS_* files) or, knowingly, plaintext
  (ERA5_INSECURE_PLAINTEXT); with TLS the workers speak https with certificates of their own.
- With --tls (the prod overlay): cert-manager Issuers and Certificates for the coordinator
  (DNS SAN) and Redis, worker certificates from cert-manager's CSI driver named by the pod
  (.../era5/worker/${POD_NAME}, at most 24 h); who may obtain which identity
  (approver-policy: an Issuer per kind of identity, each bounded by a policy, operator
  identities usable by no ServiceAccount, the coordinator pinned to the policies' trust domain),
  every Certificate issued by an Issuer that exists, every mounted secret provided, Redis on
  TLS only and the coordinator on rediss://, probes over https. cert-manager resources (which
  the schema validator does not know) are checked field by field.

Prints every violation; exits 1 if any."""

import re
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


UNITS = {"kb": 1000, "k": 1000, "mb": 1000**2, "m": 1000**2, "gb": 1000**3, "g": 1000**3,
         "kib": 1024, "mib": 1024**2, "gib": 1024**3, "ki": 1024, "mi": 1024**2, "gi": 1024**3}


def to_bytes(text):
    """A Redis (1536mb) or Kubernetes (2Gi) size in bytes."""
    match = re.fullmatch(r"(\d+)([a-zA-Z]*)", str(text).strip())
    if not match:
        return None
    number, unit = match.groups()
    return int(number) * UNITS.get(unit.lower(), 1) if unit else int(number)


def workloads(docs, name):
    return [d for d in docs if d["kind"] in WORKLOADS
            and d["spec"]["template"]["metadata"].get("labels", {}).get("app.kubernetes.io/name") == name]


def env_of(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def flag(args, name):
    """The value after `name` in an argument list, or of `name=value`."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def budgets_for(docs, name):
    return [b for b in docs if b["kind"] == "PodDisruptionBudget"
            and b["spec"]["selector"].get("matchLabels", {}).get("app.kubernetes.io/name") == name]


# cert-manager fields era5 uses, with the keys each may hold (anything else is a typo).
CERTIFICATE_KEYS = {"secretName", "duration", "renewBefore", "dnsNames", "uris", "usages",
                    "privateKey", "issuerRef", "isCA", "commonName"}
ISSUER_KINDS = {"selfSigned", "ca"}
USAGES = {"digital signature", "key encipherment", "server auth", "client auth", "cert sign",
          "crl sign"}
SPIFFE_OPERATOR = re.compile(r"^spiffe://[^/]+/era5/operator/[a-z0-9._-]{1,63}$")
SPIFFE_WORKER_POD = "/era5/worker/${POD_NAME}"


def check_era5(docs, tls):
    problems = []
    secrets_provided = {d["metadata"]["name"] for d in docs if d["kind"] == "Secret"}
    # Redis.
    for redis in workloads(docs, "era5-redis"):
        container = redis["spec"]["template"]["spec"]["containers"][0]
        args = container.get("args", [])
        limit = to_bytes(container.get("resources", {}).get("limits", {}).get("memory"))
        maxmemory = to_bytes(flag(args, "--maxmemory"))
        if maxmemory is None or limit is None or maxmemory >= limit:
            problems.append(f"redis: --maxmemory {flag(args, '--maxmemory')} is not below its memory limit")
        if flag(args, "--maxmemory-policy") != "noeviction":
            problems.append("redis: --maxmemory-policy is not noeviction")
        script = " ".join(container.get("command", []))
        if "user default off" not in script or "user era5 on" not in script:
            problems.append("redis: the default user is not off, or the era5 ACL user is missing")
        mounts = {v["name"] for v in redis["spec"]["template"]["spec"].get("volumes", [])
                  if v.get("configMap", {}).get("name", "").startswith("era5-redis-acl")}
        if not mounts:
            problems.append("redis: the era5 ACL file (configmap era5-redis-acl) is not mounted")
        if not budgets_for(docs, "era5-redis"):
            problems.append("redis: no PodDisruptionBudget of its own")
        if tls:
            if flag(args, "--port") != "0" or flag(args, "--tls-port") is None:
                problems.append("redis: not TLS-only (--port 0 and --tls-port)")
    acl = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("era5-redis-acl")]
    for config in acl:
        rules = " ".join(line for line in config["data"].get("era5-user.acl", "").splitlines()
                         if not line.startswith("#"))
        if "~era5:*" not in rules or "-@all" not in rules or "resetchannels" not in rules:
            problems.append("redis ACL: the era5 user is not limited to ~era5:*, no channels and listed commands")
    # Workers.
    for worker in workloads(docs, "era5-worker"):
        pod = worker["spec"]["template"]["spec"]
        if pod.get("securityContext", {}).get("fsGroupChangePolicy") != "OnRootMismatch":
            problems.append("worker: fsGroupChangePolicy is not OnRootMismatch")
        for budget in budgets_for(docs, "era5-worker"):
            if budget["spec"].get("unhealthyPodEvictionPolicy") != "AlwaysAllow":
                problems.append("worker: its PodDisruptionBudget does not let unhealthy pods be evicted (AlwaysAllow)")
    # The coordinator's transport, and the workers' to match.
    for coordinator in workloads(docs, "era5-coordinator"):
        container = coordinator["spec"]["template"]["spec"]["containers"][0]
        env = env_of(container)
        if not re.match(r"^rediss?://era5:", env.get("ERA5_REDIS", "")):
            problems.append("coordinator: ERA5_REDIS does not connect as the era5 ACL user")
        has_tls = all(env.get(k) for k in ("ERA5_TLS_CERT", "ERA5_TLS_KEY", "ERA5_TLS_CA"))
        plaintext = env.get("ERA5_INSECURE_PLAINTEXT") == "true"
        if has_tls == plaintext:
            problems.append("coordinator: needs either all of ERA5_TLS_CERT/KEY/CA or ERA5_INSECURE_PLAINTEXT")
        if tls and not has_tls:
            problems.append("coordinator: no TLS")
        if has_tls:
            if not env.get("ERA5_REDIS", "").startswith("rediss://") or not env.get("ERA5_REDIS_CA"):
                problems.append("coordinator: Redis is not reached over rediss:// with ERA5_REDIS_CA")
            for probe in ("livenessProbe", "readinessProbe"):
                if container.get(probe, {}).get("httpGet", {}).get("scheme") != "HTTPS":
                    problems.append(f"coordinator: {probe} is not over https")
        for worker in workloads(docs, "era5-worker"):
            wenv = env_of(worker["spec"]["template"]["spec"]["containers"][0])
            url = wenv.get("ERA5_COORDINATOR", "")
            if has_tls and (not url.startswith("https://")
                            or not all(wenv.get(k) for k in ("ERA5_TLS_CERT", "ERA5_TLS_KEY", "ERA5_TLS_CA"))):
                problems.append("worker: the coordinator speaks TLS but the worker has no https URL and certificate")
            if not has_tls and not url.startswith("http://"):
                problems.append("worker: the coordinator is plaintext but the worker's URL is not http://")
    if tls:
        problems += check_cert_manager(docs, secrets_provided)
        problems += check_identities(docs)
    return problems


def check_cert_manager(docs, secrets_provided):
    problems = []
    issuers = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Issuer"}
    certificates = [d for d in docs if d["kind"] == "Certificate"]
    for name, issuer in issuers.items():
        kinds = set(issuer.get("spec", {})) & ISSUER_KINDS
        if len(kinds) != 1 or set(issuer.get("spec", {})) - ISSUER_KINDS:
            problems.append(f"issuer {name}: expected exactly one of {sorted(ISSUER_KINDS)}")
        if "ca" in kinds and not any(c["spec"].get("secretName") == issuer["spec"]["ca"].get("secretName")
                                     and c["spec"].get("isCA") for c in certificates):
            problems.append(f"issuer {name}: its CA secret is made by no CA Certificate")
    secrets_provided = secrets_provided | {c["spec"].get("secretName") for c in certificates}
    for cert in certificates:
        name = cert["metadata"]["name"]
        spec = cert.get("spec", {})
        unknown = set(spec) - CERTIFICATE_KEYS
        if unknown:
            problems.append(f"certificate {name}: unknown fields {sorted(unknown)}")
        if not spec.get("secretName"):
            problems.append(f"certificate {name}: no secretName")
        ref = spec.get("issuerRef", {})
        if ref.get("kind", "Issuer") != "Issuer" or ref.get("name") not in issuers:
            problems.append(f"certificate {name}: issuer {ref.get('name')} does not exist")
        if set(spec.get("usages", [])) - USAGES:
            problems.append(f"certificate {name}: unknown usages {sorted(set(spec['usages']) - USAGES)}")
        if not (spec.get("dnsNames") or spec.get("uris") or spec.get("isCA")):
            problems.append(f"certificate {name}: no subject alternative name")
    mounted = {}
    for kind in WORKLOADS:
        for workload in (d for d in docs if d["kind"] == kind):
            for volume in workload["spec"]["template"]["spec"].get("volumes", []):
                if "secret" in volume:
                    mounted[volume["secret"]["secretName"]] = workload["metadata"]["name"]
    for secret, workload in mounted.items():
        if secret not in secrets_provided and secret != "era5-redis":
            problems.append(f"{workload}: mounts secret {secret}, which nothing provides")
    coordinator_secret = next((s for s, w in mounted.items() if w == "coordinator"), None)
    coordinator_certs = [c for c in certificates if c["spec"].get("secretName") == coordinator_secret]
    if not any("coordinator" in c["spec"].get("dnsNames", []) and "server auth" in c["spec"].get("usages", [])
               for c in coordinator_certs):
        problems.append("no server Certificate with the DNS SAN `coordinator` mounted by the coordinator")
    if not any("redis" in c["spec"].get("dnsNames", []) for c in certificates):
        problems.append("no server Certificate with the DNS SAN `redis`")
    for cert in certificates:
        if any(SPIFFE_OPERATOR.match(u) for u in cert["spec"].get("uris", [])):
            problems.append(f"certificate {cert['metadata']['name']}: an operator identity issued by cert-manager's"
                            " controller, which any Certificate in the namespace could ask for; operators request"
                            " their own (docs/operations.md)")
    for worker in workloads(docs, "era5-worker"):
        csi = [v["csi"] for v in worker["spec"]["template"]["spec"].get("volumes", [])
               if v.get("csi", {}).get("driver") == "csi.cert-manager.io"]
        if not csi:
            problems.append("worker: no certificate from cert-manager's CSI driver")
        for volume in csi:
            attributes = volume.get("volumeAttributes", {})
            uri = attributes.get("csi.cert-manager.io/uri-sans", "")
            if not (uri.startswith("spiffe://") and uri.endswith(SPIFFE_WORKER_POD)):
                problems.append(f"worker: its certificate's URI SAN {uri!r} is not spiffe://<td>/era5/worker/${{POD_NAME}}")
            if attributes.get("csi.cert-manager.io/issuer-name") not in issuers:
                problems.append("worker: its CSI certificate's issuer does not exist")
            if hours(attributes.get("csi.cert-manager.io/duration", "2160h")) > 24:
                problems.append("worker: its CSI certificate lives longer than 24 h")
            if "client auth" not in attributes.get("csi.cert-manager.io/key-usages", ""):
                problems.append("worker: its CSI certificate is not for client auth")
    return problems


def hours(duration):
    """Hours in a Go duration such as 24h or 90m (0 if unreadable)."""
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(h|m|s)", duration or ""):
        total += float(number) * {"h": 1, "m": 1 / 60, "s": 1 / 3600}[unit]
    return total


POLICY_KEYS = {"allowed", "constraints", "selector", "plugins"}


def check_identities(docs):
    """Who may obtain which identity (approver-policy): workers, operators and servers each
    from an Issuer of their own, every signing Issuer under a CertificateRequestPolicy that
    allows only its kind of name, the operator policy usable by no ServiceAccount, and the
    coordinator pinned to the trust domain the policies name."""
    problems = []
    issuers = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Issuer"}
    policies = [d for d in docs if d["kind"] == "CertificateRequestPolicy"]
    bindings = [d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] in ("Role", "ClusterRole")}
    by_issuer = {}
    for policy in policies:
        name = policy["metadata"]["name"]
        spec = policy.get("spec", {})
        if set(spec) - POLICY_KEYS:
            problems.append(f"policy {name}: unknown fields {sorted(set(spec) - POLICY_KEYS)}")
        issuer = spec.get("selector", {}).get("issuerRef", {}).get("name")
        if issuer not in issuers:
            problems.append(f"policy {name}: selects issuer {issuer}, which does not exist")
        by_issuer.setdefault(issuer, []).append(policy)

    def users_of(policy_name):
        """The subjects bound to a role that may `use` this policy."""
        subjects = []
        for binding in bindings:
            role = roles.get(binding["roleRef"]["name"], {})
            if any("use" in rule.get("verbs", []) and "certificaterequestpolicies" in rule.get("resources", [])
                   and policy_name in rule.get("resourceNames", [policy_name]) for rule in role.get("rules", [])):
                subjects += binding.get("subjects", [])
        return subjects

    for name, issuer in issuers.items():
        if "ca" in issuer.get("spec", {}) and name not in by_issuer:
            problems.append(f"issuer {name}: signs with the CA but no CertificateRequestPolicy bounds it")
    domains = set()
    role_issuers = {}
    for issuer, selected in by_issuer.items():
        for policy in selected:
            allowed = policy["spec"].get("allowed", {})
            uris = allowed.get("uris", {}).get("values", [])
            usages = set(allowed.get("usages", []))
            name = policy["metadata"]["name"]
            if uris:
                kinds = {re.sub(r"^spiffe://[^/]+/era5/(worker|operator)/\*$", r"\1", u) for u in uris}
                if not kinds <= {"worker", "operator"} or len(kinds) != 1:
                    problems.append(f"policy {name}: URI SANs {uris} are not all spiffe://<td>/era5/<worker|operator>/*")
                    continue
                kind = kinds.pop()
                role_issuers.setdefault(kind, set()).add(issuer)
                domains |= {u.split("/")[2] for u in uris}
                if not allowed.get("uris", {}).get("required"):
                    problems.append(f"policy {name}: a {kind} certificate may omit its URI SAN")
                if allowed.get("dnsNames") or usages - {"digital signature", "client auth"}:
                    problems.append(f"policy {name}: a {kind} identity may also be a server")
                most = 24 if kind == "worker" else 720
                if hours(policy["spec"].get("constraints", {}).get("maxDuration")) > most or \
                        not policy["spec"].get("constraints", {}).get("maxDuration"):
                    problems.append(f"policy {name}: {kind} certificates may live longer than {most} h")
                subjects = users_of(name)
                if kind == "operator" and any(s.get("kind") == "ServiceAccount" for s in subjects):
                    problems.append(f"policy {name}: a ServiceAccount (so a pod) may obtain an operator identity")
                if not subjects:
                    problems.append(f"policy {name}: nobody may use it")
            elif allowed.get("dnsNames"):
                role_issuers.setdefault("server", set()).add(issuer)
                if usages - {"digital signature", "key encipherment", "server auth"}:
                    problems.append(f"policy {name}: a server certificate may also be a client")
    for kind in ("worker", "operator", "server"):
        if kind not in role_issuers:
            problems.append(f"no CertificateRequestPolicy for {kind} identities")
    for a, b in (("worker", "operator"), ("worker", "server"), ("operator", "server")):
        if role_issuers.get(a, set()) & role_issuers.get(b, set()):
            problems.append(f"one issuer signs both {a} and {b} identities")
    for worker in workloads(docs, "era5-worker"):
        for volume in worker["spec"]["template"]["spec"].get("volumes", []):
            issuer = volume.get("csi", {}).get("volumeAttributes", {}).get("csi.cert-manager.io/issuer-name")
            if issuer and issuer not in role_issuers.get("worker", set()):
                problems.append(f"worker: its certificates come from {issuer}, not the workers' issuer")
    for coordinator in workloads(docs, "era5-coordinator"):
        pinned = env_of(coordinator["spec"]["template"]["spec"]["containers"][0]).get("ERA5_TRUST_DOMAIN")
        if not pinned:
            problems.append("coordinator: ERA5_TRUST_DOMAIN is not set: it would accept any trust domain the CA signed")
        elif domains and domains != {pinned}:
            problems.append(f"coordinator: trust domain {pinned} is not the policies' {sorted(domains)}")
    return problems


def self_test(docs):
    """The identity rules catch what they are for, on mutated copies of a good rendering."""
    import copy

    def mutated(change):
        docs_copy = copy.deepcopy(docs)
        for doc in docs_copy:
            change(doc)
        return check_identities(docs_copy)

    def operator_to_pods(doc):
        if doc["kind"] == "RoleBinding" and doc["metadata"]["name"] == "era5-operator-identities":
            doc["subjects"] = [{"kind": "ServiceAccount", "name": "default", "namespace": "era5"}]

    def unpinned(doc):
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "coordinator":
            container = doc["spec"]["template"]["spec"]["containers"][0]
            container["env"] = [e for e in container["env"] if e["name"] != "ERA5_TRUST_DOMAIN"]

    def shared_issuer(doc):
        if doc["kind"] == "CertificateRequestPolicy" and doc["metadata"]["name"] == "era5-operators":
            doc["spec"]["selector"]["issuerRef"]["name"] = "era5-workers"

    def long_lived(doc):
        if doc["kind"] == "CertificateRequestPolicy" and doc["metadata"]["name"] == "era5-workers":
            doc["spec"]["constraints"]["maxDuration"] = "2160h"

    failures = []
    for name, change, expected in [
        ("operator identities usable by pods", operator_to_pods, "may obtain an operator identity"),
        ("an unpinned trust domain", unpinned, "ERA5_TRUST_DOMAIN is not set"),
        ("one issuer for workers and operators", shared_issuer, "signs both worker and operator"),
        ("long-lived worker certificates", long_lived, "longer than 24 h"),
    ]:
        found = mutated(change)
        if not any(expected in problem for problem in found):
            failures.append(f"self-test: {name} was not caught ({found})")
    if check_identities(docs):
        failures.append(f"self-test: the rendering itself fails: {check_identities(docs)}")
    return failures


def main():
    with open(sys.argv[1]) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    tls = "--tls" in sys.argv[2:]
    problems = check(docs) + check_era5(docs, tls)
    if "--self-test" in sys.argv[2:]:
        problems += self_test(docs)
    for problem in problems:
        print(f"{sys.argv[1]}: {problem}", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
