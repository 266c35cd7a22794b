#!/usr/bin/env bash
# Installs what Strata's tests need on a fresh machine (Debian with Rust, gcc, kubectl, python3).
# Idempotent: installs only what is missing.
set -euo pipefail

need=()
command -v kubectl >/dev/null 2>&1 || need+=(kubectl)

if [ ${#need[@]} -gt 0 ]; then
  if [ "${need[*]}" = kubectl ]; then
    for v in 33 32 31 30 29 28 27; do
      if [ -x "/usr/lib/google-cloud-sdk/bin/kubectl.1.$v" ]; then
        ln -sf "/usr/lib/google-cloud-sdk/bin/kubectl.1.$v" /usr/local/bin/kubectl
        exit 0
      fi
    done
  fi
  echo "missing: ${need[*]} (kubectl ships on the machine image; nothing else is needed yet)" >&2
  exit 1
fi
