#!/usr/bin/env bash
# On a machine with a GPU (a session lent one): the deviceless plans of `vqax plan --target` against the GPU's
# own memory_analysis() and peak bytes in use, the GPU-relevant tests and bench_train's vqax rows, in under
# 8 minutes, into one JSON (and OUT_files/ beside it). Needs: pip install -e '.[cuda12,plan-gpu,test]'.
#   tools/device_check.sh [OUT.json] [--skip tests,bench] [--dry_run]
# --dry_run does no GPU work (the JSON's shape with null figures): the check on a CPU-only machine.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="device_check.json"
if [[ $# -gt 0 && "$1" != --* ]]; then OUT="$1"; shift; fi
exec timeout 470 "${PYTHON:-python}" -m tools.device_check --out "$OUT" "$@"
