#!/usr/bin/env bash
# Validates the scheduler examples in this folder offline, in a few seconds: the Kubernetes
# Indexed Job and the Argo Workflow (schemas, pod rules, exit statuses -> retries:
# check_examples.py, with its self-test) and the Slurm array script (bash -n, shellcheck, and
# runs against stub era5 and scontrol: check_slurm.sh). One line per example on success; any
# failure exits non-zero. deploy/validate.sh runs it, so CI does. Needs kubernetes-validate,
# hera (pip) and shellcheck (Debian): scripts/test --install-only installs them.
set -euo pipefail
cd "$(dirname "$0")"
python3 check_examples.py --self-test
./check_slurm.sh
