#!/usr/bin/env python3
"""Offline checks of the scheduler examples beside this file (deploy/examples/check.sh runs it).

indexed-job.yaml (a Kubernetes Indexed Job):
- the Kubernetes schema, strict (kubernetes-validate, --kubernetes-version, default 1.30.0);
- the project's pod rules (deploy/check_policies.py: restricted pod security, no token,
  resources), less the two that do not apply to a batch pod (see NOT_FOR_BATCH);
- one pod per shard: Indexed, completions = N of `--shard auto/N`, retries per index, pods
  replaced only once terminated, restartPolicy Never;
- the podFailurePolicy, evaluated as the Job controller does (first matching rule) for every
  exit status and for a disrupted pod: 2 fails the Job, 3 and 130 and disruptions are ignored,
  anything else counts against the shard's retries; and the API's own rules on those rules.

argo-workflow.yaml (an Argo Workflow; Kubernetes schemas do not have Argo's kinds):
- Argo's Workflow schema as hera's pydantic models carry it (generated from Argo's OpenAPI
  spec), strict: every key must be a field of Argo's type at that place;
- each container template as the Pod Argo makes of it: the Kubernetes schema (strict) and the
  same pod rules as the Job;
- no token in era5's container (then Argo needs executor.serviceAccountName);
- the fan-out: withSequence runs `sync --shard I/N` for exactly I = 0..N-1, all with the same
  selection, and the audit step runs after it over that whole selection, without --shard;
- the retry expression, evaluated for every exit status: retries 1, 3, 130 and pods that
  never reached an exit status ("Error"), never 2.

Prints one line per example on success, every problem otherwise; exits 1 if any."""

import copy
import os
import re
import subprocess
import sys
import tempfile
import types
import typing

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import check_policies  # noqa: E402  (deploy/check_policies.py)



def released_image():
    """The image deploy/base names (scripts/image-check holds it to the crate's version), so the
    examples move with a release."""
    with open(os.path.join(os.path.dirname(HERE), "base", "kustomization.yaml")) as f:
        image = next(i for i in yaml.safe_load(f)["images"] if i["name"] == "era5")
    return f"{image['newName']}:{image['newTag']}"


IMAGE = released_image()
ENTRYPOINT = "/usr/local/bin/era5"
# era5's exit status table (`era5 --help`).
BAD_INPUT = 2
RUN_AGAIN = {1, 3, 130}
INTERRUPTED_OR_LIMIT = {3, 130}
# Rules of deploy/check_policies.py that are for long-running services, not batch pods: era5
# sync serves no HTTP port to probe (its pod ends when the shard is done), and the examples go
# into the user's namespace, whose own NetworkPolicies apply (deploy/'s default-deny among them).
NOT_FOR_BATCH = [re.compile(r": no (liveness|readiness)Probe$"), re.compile(r"^no default-deny NetworkPolicy$")]
SELECTION_FLAGS = ("--product", "--var", "--grid", "--start", "--end", "--dest")


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def flags(args):
    """`--name=value` and `--name value` as a dict; bare flags map to True."""
    out = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--") and "=" in arg:
            name, value = arg.split("=", 1)
            out[name] = value
        elif arg.startswith("--") and i + 1 < len(args) and not args[i + 1].startswith("--"):
            out[arg] = args[i + 1]
            i += 1
        elif arg.startswith("--"):
            out[arg] = True
        i += 1
    return out


def pod_rules(docs):
    """check_policies.py's rules, less NOT_FOR_BATCH."""
    problems = check_policies.check(docs) + check_policies.check_era5(docs, tls=False)
    return [p for p in problems if not any(rule.search(p) for rule in NOT_FOR_BATCH)]


def kubernetes_validate(path, version):
    if version is None:  # the self-test, where only the project's own checks are under test
        return []
    result = subprocess.run(["kubernetes-validate", "--strict", "--quiet", "--kubernetes-version", version, path],
                            capture_output=True, text=True)
    if result.returncode != 0:
        return [f"kubernetes-validate {version}: {(result.stdout + result.stderr).strip()}"]
    return []


def mounted_dest(container, pod, dest):
    """A problem if DEST is not on a volume mount of a PersistentVolumeClaim."""
    claims = {v["name"] for v in pod.get("volumes", []) if "persistentVolumeClaim" in v}
    for mount in container.get("volumeMounts", []):
        root = mount["mountPath"].rstrip("/") + "/"
        if mount["name"] in claims and (dest + "/").startswith(root):
            return []
    return [f"--dest {dest} is not on a mounted PersistentVolumeClaim"]


# --- The Kubernetes Indexed Job -------------------------------------------------------------

def failure_action(rules, exit_code, conditions, container):
    """The action the Job controller takes on a failed pod: the first rule that matches (a
    rule's onExitCodes ignore exit 0), Count when none does."""
    for rule in rules:
        if "onExitCodes" in rule:
            req = rule["onExitCodes"]
            if req.get("containerName", container) != container or exit_code == 0:
                continue
            inside = exit_code in req["values"]
            if inside == (req["operator"] == "In"):
                return rule["action"]
        for cond in rule.get("onPodConditions", []):
            if (cond["type"], cond.get("status", "True")) in conditions:
                return rule["action"]
    return "Count"


def check_job(path, version):
    problems = kubernetes_validate(path, version)
    docs = load(path)
    jobs = [d for d in docs if d["kind"] == "Job"]
    if len(jobs) != 1:
        return problems + [f"expected one Job, found {len(jobs)}"]
    job = jobs[0]
    spec = job["spec"]
    pod = spec["template"]["spec"]
    problems += pod_rules(docs)
    containers = pod["containers"]
    era5 = [c for c in containers if c.get("image") == IMAGE]
    if len(era5) != 1:
        return problems + [f"expected one container of {IMAGE}"]
    container = era5[0]
    if container.get("command") not in (None, [ENTRYPOINT]):
        problems.append(f"the container's command is not the image's entrypoint {ENTRYPOINT}")
    args = container.get("args", [])
    given = flags(args)
    if args[:1] != ["sync"]:
        problems.append("the container does not run era5 sync")
    shard = re.fullmatch(r"auto/(\d+)", str(given.get("--shard", "")))
    if not shard:
        problems.append("era5 sync has no --shard auto/N")
    elif spec.get("completions") != int(shard.group(1)):
        problems.append(f"completions {spec.get('completions')} is not the N of --shard {given['--shard']}")
    for flag in ("--no-progress", "--json"):
        if given.get(flag) is not True:
            problems.append(f"era5 sync lacks {flag}")
    problems += mounted_dest(container, pod, str(given.get("--dest", "")))
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod.get("volumes", []) if "persistentVolumeClaim" in v}
    declared = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    if claims - declared:
        problems.append(f"claims {sorted(claims - declared)}, which this file does not declare")
    for d in docs:
        if d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] in claims \
                and "ReadWriteMany" not in d["spec"].get("accessModes", []):
            problems.append(f"PVC {d['metadata']['name']} is not ReadWriteMany: shards on several nodes share it")
    if spec.get("completionMode") != "Indexed":
        problems.append("completionMode is not Indexed (JOB_COMPLETION_INDEX is only set then)")
    if not 1 <= spec.get("parallelism", 1) <= spec.get("completions", 1):
        problems.append("parallelism is not between 1 and completions")
    if not spec.get("backoffLimitPerIndex", 0) >= 1:
        problems.append("no backoffLimitPerIndex: a shard's failures would use up every shard's retries")
    if "maxFailedIndexes" not in spec:
        problems.append("no maxFailedIndexes")
    if pod.get("restartPolicy") != "Never":
        problems.append("restartPolicy is not Never (required by podFailurePolicy and backoffLimitPerIndex)")
    if spec.get("podReplacementPolicy") != "Failed":
        problems.append("podReplacementPolicy is not Failed: a shard could run twice at once")
    rules = spec.get("podFailurePolicy", {}).get("rules", [])
    names = {c["name"] for c in containers + pod.get("initContainers", [])}
    # The API server's own rules, which the schema does not carry.
    if len(rules) > 20:
        problems.append("more than 20 podFailurePolicy rules")
    for i, rule in enumerate(rules):
        if ("onExitCodes" in rule) == ("onPodConditions" in rule):
            problems.append(f"podFailurePolicy rule {i}: needs exactly one of onExitCodes and onPodConditions")
        if rule["action"] not in ("FailJob", "FailIndex", "Ignore", "Count"):
            problems.append(f"podFailurePolicy rule {i}: unknown action {rule['action']}")
        req = rule.get("onExitCodes")
        if req:
            values = req.get("values", [])
            if values != sorted(set(values)) or not 1 <= len(values) <= 255:
                problems.append(f"podFailurePolicy rule {i}: values must be ordered, unique, 1 to 255 of them")
            if req.get("operator") == "In" and 0 in values:
                problems.append(f"podFailurePolicy rule {i}: 0 cannot be used with In")
            if req.get("operator") not in ("In", "NotIn"):
                problems.append(f"podFailurePolicy rule {i}: operator is not In or NotIn")
            if "containerName" in req and req["containerName"] not in names:
                problems.append(f"podFailurePolicy rule {i}: no container named {req['containerName']}")
    # What each exit status does, as the controller decides it.
    name = container["name"]
    for code in range(1, 256):
        action = failure_action(rules, code, set(), name)
        want = "FailJob" if code == BAD_INPUT else "Ignore" if code in INTERRUPTED_OR_LIMIT else "Count"
        if action != want:
            problems.append(f"podFailurePolicy: exit {code} -> {action}, expected {want}")
    for code in (1, 130, 137):
        action = failure_action(rules, code, {("DisruptionTarget", "True")}, name)
        if action != "Ignore":
            problems.append(f"podFailurePolicy: a disrupted pod (exit {code}) -> {action}, expected Ignore")
    return problems


# --- The Argo Workflow ------------------------------------------------------------------------

def unknown_keys(value, annotation, path):
    """Keys of `value` that are not fields of the pydantic type `annotation` at their place
    (pydantic ignores them; Argo's controller would reject or drop them)."""
    from pydantic import BaseModel, RootModel

    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return unknown_keys(value, args[0], path)
    if origin in (typing.Union, types.UnionType):
        found = None
        for arg in args:
            if arg is type(None):
                continue
            problems = unknown_keys(value, arg, path)
            if not problems:
                return []
            found = problems if found is None else found
        return found or []
    if origin is list and isinstance(value, list):
        return [p for i, v in enumerate(value) for p in unknown_keys(v, args[0], f"{path}[{i}]")]
    if origin is dict and isinstance(value, dict):
        return [p for k, v in value.items() for p in unknown_keys(v, args[1], f"{path}.{k}")]
    if isinstance(annotation, type) and issubclass(annotation, RootModel):
        return unknown_keys(value, annotation.model_fields["root"].annotation, path)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if not isinstance(value, dict):
            return []
        fields = {(f.alias or n): f for n, f in annotation.model_fields.items()}
        problems = []
        for key, item in value.items():
            if key not in fields:
                problems.append(f"{path}.{key}: not a field of Argo's {annotation.__name__}")
            else:
                problems += unknown_keys(item, fields[key].annotation, f"{path}.{key}")
        return problems
    return []


def argo_schema(doc):
    try:
        from hera.workflows.models import Workflow
        from pydantic import ValidationError
    except ImportError:
        return ["hera is not installed (python3 -m pip install hera; scripts/test --install-only does it)"]
    problems = unknown_keys(doc, Workflow, "workflow")
    try:
        Workflow.model_validate(doc)
    except ValidationError as error:
        problems += [f"workflow.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()]
    return problems


def retried(expression, exit_code, status):
    """Argo's retry expression (expr) for one attempt, for the few forms it may use here:
    asInt(lastRetry.exitCode), lastRetry.status, ==, !=, &&, ||, parentheses, literals."""
    tokens = re.findall(r'\s+|asInt\(lastRetry\.exitCode\)|lastRetry\.status|&&|\|\||==|!=|\(|\)|-?\d+|"[^"]*"|.',
                        expression)
    python = []
    for token in tokens:
        if token.isspace():
            continue
        if token == "asInt(lastRetry.exitCode)":
            python.append("exit_code")
        elif token == "lastRetry.status":
            python.append("status")
        elif token in ("&&", "||"):
            python.append({"&&": "and", "||": "or"}[token])
        elif token in ("==", "!=", "(", ")") or re.fullmatch(r'-?\d+|"[^"]*"', token):
            python.append(token)
        else:
            raise ValueError(f"the retry expression uses {token!r}, which this checker does not evaluate")
    return bool(eval(" ".join(python), {"__builtins__": {}}, {"exit_code": exit_code, "status": status}))


def substitute(text, values):
    return re.sub(r"\{\{\s*([\w.-]+)\s*\}\}", lambda m: str(values.get(m.group(1), m.group(0))), text)


def argo_pod(workflow, template):
    """The Pod Argo makes of a container template, as far as the examples' fields go (Argo adds
    its own init and wait containers, configured in its controller)."""
    spec = workflow["spec"]
    container = copy.deepcopy(template["container"])
    container["name"] = "main"
    pod = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": spec.get("volumes", []) + template.get("volumes", []),
        "securityContext": template.get("securityContext", spec.get("securityContext", {})),
    }
    automount = template.get("automountServiceAccountToken", spec.get("automountServiceAccountToken"))
    if automount is not None:
        pod["automountServiceAccountToken"] = automount
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"argo-{template['name']}"}, "spec": pod}


def check_argo(path, version):
    docs = load(path)
    if len(docs) != 1:
        return [f"expected one document, found {len(docs)}"]
    workflow = docs[0]
    problems = []
    if workflow.get("apiVersion") != "argoproj.io/v1alpha1" or workflow.get("kind") != "Workflow":
        problems.append("not an argoproj.io/v1alpha1 Workflow")
    if "generateName" not in workflow.get("metadata", {}):
        problems.append("no metadata.generateName: a second submission would clash")
    problems += argo_schema(workflow)
    spec = workflow["spec"]
    templates = {t["name"]: t for t in spec["templates"]}
    params = {f"workflow.parameters.{p['name']}": p.get("value") for p in spec.get("arguments", {}).get("parameters", [])}
    if spec.get("automountServiceAccountToken") is not False:
        problems.append("the service-account token is mounted into era5's container")
    elif not spec.get("executor", {}).get("serviceAccountName"):
        problems.append("automountServiceAccountToken false needs executor.serviceAccountName (Argo refuses it otherwise)")
    # Each container template as a Pod: Kubernetes schema and pod rules.
    pods = [argo_pod(workflow, t) for t in templates.values() if "container" in t]
    with tempfile.TemporaryDirectory() as tmp:
        pods_path = os.path.join(tmp, "argo-pods.yaml")
        with open(pods_path, "w") as f:
            yaml.safe_dump_all(pods, f, sort_keys=False)
        problems += [f"{p} (the pods Argo makes)" for p in kubernetes_validate(pods_path, version)]
    as_jobs = [{"kind": "Job", "metadata": {"name": p["metadata"]["name"]},
                "spec": {"template": {"metadata": {}, "spec": p["spec"]}}} for p in pods]
    problems += pod_rules(as_jobs)
    for name, template in templates.items():
        if "container" in template:
            container = template["container"]
            if container.get("image") != IMAGE or container.get("command") != [ENTRYPOINT]:
                problems.append(f"template {name}: not {IMAGE} with command [{ENTRYPOINT}]")
    # The fan-out and the audit after it.
    entry = templates.get(spec.get("entrypoint"), {})
    groups = entry.get("steps", [])
    fanout = [(i, s) for i, group in enumerate(groups) for s in group if "withSequence" in s]
    audits = [(i, s) for i, group in enumerate(groups) for s in group
              if templates.get(s["template"], {}).get("container", {}).get("args", [])[:1] == ["audit"]]
    if len(fanout) != 1 or len(audits) != 1:
        return problems + ["the entrypoint's steps need one withSequence fan-out and one audit step"]
    (fan_group, fan_step), (audit_group, audit_step) = fanout[0], audits[0]
    if audit_group <= fan_group:
        problems.append("the audit step does not come after the shards")
    if "when" in audit_step or "continueOn" in fan_step:
        problems.append("the audit must run only when every shard succeeded")
    sequence = fan_step["withSequence"]
    count = substitute(str(sequence.get("count", "")), params)
    if not count.isdigit() or set(sequence) - {"count"}:
        return problems + [f"withSequence must be a plain count (got {sequence})"]
    count = int(count)
    shard_template = templates[fan_step["template"]]
    selections = set()
    indexes = []
    for item in range(count):
        step_params = {f"inputs.parameters.{p['name']}": substitute(str(p.get("value", "")), {"item": item})
                       for p in fan_step.get("arguments", {}).get("parameters", [])}
        args = [substitute(substitute(a, params), step_params) for a in shard_template["container"].get("args", [])]
        if any("{{" in a for a in args):
            problems.append(f"shard {item}: unresolved parameters in {args}")
            break
        given = flags(args)
        if args[:1] != ["sync"]:
            problems.append("the shard template does not run era5 sync")
            break
        shard = re.fullmatch(r"(\d+)/(\d+)", str(given.get("--shard", "")))
        if not shard or int(shard.group(2)) != count:
            problems.append(f"shard {item}: --shard {given.get('--shard')} is not I/{count}")
            break
        indexes.append(int(shard.group(1)))
        selections.add(tuple((f, given.get(f)) for f in SELECTION_FLAGS))
        for flag in ("--no-progress", "--json"):
            if given.get(flag) is not True:
                problems.append(f"era5 sync lacks {flag}")
        problems += mounted_dest(shard_template["container"], {"volumes": spec.get("volumes", [])},
                                 str(given.get("--dest", "")))
    if indexes and sorted(indexes) != list(range(count)):
        problems.append(f"the shards run indexes {indexes}, not 0..{count - 1}")
    audit_args = [substitute(a, params) for a in templates[audit_step["template"]]["container"]["args"]]
    audit_flags = flags(audit_args)
    if "--shard" in audit_flags:
        problems.append("the audit covers one shard, not the whole selection")
    if len(selections) != 1 or selections != {tuple((f, audit_flags.get(f)) for f in SELECTION_FLAGS)}:
        problems.append(f"the shards and the audit do not share one selection: {selections} vs {audit_args}")
    # The retry expression: what is retried.
    strategy = shard_template.get("retryStrategy", {})
    if str(strategy.get("retryPolicy")) != "Always":
        problems.append("retryPolicy is not Always: before Argo 3.5 errors would not be retried")
    if not str(strategy.get("limit", "0")).isdigit() or int(strategy.get("limit", 0)) < 1:
        problems.append("the shards' retryStrategy has no limit of at least 1")
    if "maxDuration" in strategy.get("backoff", {}):
        problems.append("backoff.maxDuration counts from the first attempt: a shard failing after hours is not retried")
    expression = strategy.get("expression", "")
    try:
        for code in range(1, 256):
            want = code in RUN_AGAIN
            if retried(expression, code, "Failed") != want:
                problems.append(f"retry expression: exit {code} {'not ' if want else ''}retried")
        if not retried(expression, -1, "Error"):
            problems.append("retry expression: a pod that never reached an exit status (Error) is not retried")
        if retried(expression, BAD_INPUT, "Error"):
            problems.append("retry expression: bad input (exit 2) is retried")
    except (ValueError, SyntaxError) as error:
        problems.append(f"retry expression {expression!r}: {error}")
    return problems


def self_test(version):
    """Each check catches what it is for, on mutated copies of the examples."""

    def job(change):
        def mutate(docs):
            spec = next(d for d in docs if d["kind"] == "Job")["spec"]
            change(spec, spec["template"]["spec"], spec["template"]["spec"]["containers"][0])
        return "indexed-job.yaml", check_job, mutate

    def argo(change):
        def mutate(docs):
            templates = {t["name"]: t for t in docs[0]["spec"]["templates"]}
            change(docs[0]["spec"], templates)
        return "argo-workflow.yaml", check_argo, mutate

    def rules(spec):
        return spec["podFailurePolicy"]["rules"]

    def set_args(container, old, new):
        container["args"] = [new if a == old else a for a in container["args"]]

    cases = [
        ("exit 2 retried", job(lambda s, p, c: rules(s)[1].update(action="Count")), "exit 2 -> Count"),
        ("no DisruptionTarget rule", job(lambda s, p, c: rules(s).pop(0)), "a disrupted pod (exit 137)"),
        ("exit 3 counted", job(lambda s, p, c: rules(s)[2]["onExitCodes"].update(values=[130])), "exit 3 -> Count"),
        ("unordered exit codes", job(lambda s, p, c: rules(s)[2]["onExitCodes"].update(values=[130, 3])),
         "must be ordered"),
        ("completions not N", job(lambda s, p, c: s.update(completions=8)), "is not the N of --shard"),
        ("writable root", job(lambda s, p, c: c["securityContext"].pop("readOnlyRootFilesystem")),
         "root filesystem is writable"),
        ("restart in place", job(lambda s, p, c: p.update(restartPolicy="OnFailure")), "restartPolicy is not Never"),
        ("dest off the volume", job(lambda s, p, c: set_args(c, "--dest=/data/era5", "--dest=/tmp/era5")),
         "is not on a mounted PersistentVolumeClaim"),
        ("unknown Argo field", argo(lambda s, t: t["sync-shard"].update(terminationGracePeriodSeconds=60)),
         "terminationGracePeriodSeconds: not a field of Argo's Template"),
        ("misspelt retry limit", argo(lambda s, t: t["sync-shard"]["retryStrategy"].update(limt="3")),
         "limt: not a field"),
        ("misspelt step field", argo(lambda s, t: s["templates"][0]["steps"][1][0].update(withParam="[]", whn="x")),
         "whn: not a field of Argo's WorkflowStep"),
        ("wrong Argo type", argo(lambda s, t: s.update(parallelism="four")), "workflow.spec.parallelism"),
        ("exit 3 not retried", argo(lambda s, t: t["sync-shard"]["retryStrategy"].update(
            expression="asInt(lastRetry.exitCode) == 1 || asInt(lastRetry.exitCode) == 130")), "exit 3 not retried"),
        ("exit 2 retried by Argo", argo(lambda s, t: t["sync-shard"]["retryStrategy"].update(
            expression='lastRetry.status == "Failed" || lastRetry.status == "Error"')), "exit 2 retried"),
        ("fewer shards than N", argo(lambda s, t: s["templates"][0]["steps"][0][0]["withSequence"].update(count="8")),
         "is not I/8"),
        ("audit of one shard", argo(lambda s, t: t["audit"]["container"]["args"].append("--shard=0/16")),
         "the audit covers one shard"),
        ("token in era5's container", argo(lambda s, t: s.pop("automountServiceAccountToken")),
         "service-account token is mounted"),
        ("Argo pod with privilege escalation", argo(lambda s, t: t["audit"]["container"]["securityContext"].update(
            allowPrivilegeEscalation=True)), "allowPrivilegeEscalation is not false"),
    ]
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (example, checker, mutate), expected in cases:
            docs = load(os.path.join(HERE, example))
            mutate(docs)
            path = os.path.join(tmp, example)
            with open(path, "w") as f:
                yaml.safe_dump_all(docs, f, sort_keys=False)
            found = checker(path, None)
            if not any(expected in problem for problem in found):
                failures.append(f"self-test: {name} was not caught ({found})")
        # The schemas are strict: a misspelt Kubernetes field fails.
        docs = load(os.path.join(HERE, "indexed-job.yaml"))
        next(d for d in docs if d["kind"] == "Job")["spec"]["backoffLimitPerIndx"] = 3
        path = os.path.join(tmp, "indexed-job.yaml")
        with open(path, "w") as f:
            yaml.safe_dump_all(docs, f, sort_keys=False)
        if not any("backoffLimitPerIndx" in p for p in kubernetes_validate(path, version)):
            failures.append("self-test: kubernetes-validate let a misspelt field through")
    return failures


def main():
    version = os.environ.get("KUBERNETES_VERSION", "1.30.0")
    failed = False
    if "--self-test" in sys.argv[1:]:
        failures = self_test(version)
        for failure in failures:
            print(f"deploy/examples: {failure}", file=sys.stderr)
        failed |= bool(failures)
    for name, checker in (("indexed-job.yaml", check_job), ("argo-workflow.yaml", check_argo)):
        problems = checker(os.path.join(HERE, name), version)
        for problem in problems:
            print(f"deploy/examples/{name}: {problem}", file=sys.stderr)
        failed |= bool(problems)
        if not problems:
            what = {"indexed-job.yaml": f"Kubernetes {version} schema, pod rules, exit statuses -> podFailurePolicy",
                    "argo-workflow.yaml": f"Argo's Workflow schema (hera), pods on Kubernetes {version}, "
                                          "fan-out and audit, exit statuses -> retries"}[name]
            print(f"deploy/examples: {name} validates ({what})")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
