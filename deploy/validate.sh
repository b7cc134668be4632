#!/usr/bin/env bash
# Checks the deployment files against their schemas (no container engine or cluster needed):
# deploy/compose.yaml against the Compose specification, deploy/k8s/*.yaml against the Kubernetes
# API schemas (strict: unknown fields fail). Validators come from PyPI into a throwaway venv.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${STROOM_VALIDATE_VENV:-${TMPDIR:-/tmp}/stroom-validate-venv}"
if [ ! -x "$venv/bin/check-jsonschema" ] || [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "check-jsonschema==0.39.0" "kubernetes-validate==1.37.0"
fi
"$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/compose.yaml
"$venv/bin/kubernetes-validate" --strict --kubernetes-version 1.30.0 --quiet deploy/k8s/*.yaml
echo "deployment files valid: deploy/compose.yaml, deploy/k8s/*.yaml"
