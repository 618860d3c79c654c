#!/usr/bin/env bash
# One entry point that sets everything up, then runs:
#   ./run.sh dry-run [ARGS]   a dry-run session against a simulated neuron (xdream dry-run ARGS)
#   ./run.sh test [ARGS]      the test suite (pytest ARGS), PsychoPy windows under Xvfb
#   ./run.sh lint             ruff and mypy on the runtime packages
#   ./run.sh xdream ARGS      any xdream command, inside the project's environment
# Set-up is idempotent: a virtual environment in .venv, torch pinned to 2.13.0
# (the tested version), PsychoPy and Xvfb only for the tests.  The pin does not
# choose CPU or CUDA: pip takes whatever build its index serves (PyPI's Linux
# wheels are CUDA builds).  TORCH_INDEX_URL=<PyTorch's CPU or CUDA index> picks
# one on purpose (README, "Installing a role").
set -euo pipefail
cd "$(dirname "$0")"
here=$(pwd)
venv="$here/.venv"
python=${PYTHON:-python3}

ensure_venv() {  # $1: the project's extras
  local extras=$1
  local stamp="$venv/.xdream-installed-$(cat pyproject.toml | sha256sum | cut -c1-12)-${extras//,/-}"
  [ -f "$stamp" ] && return 0
  [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "$venv/bin/python" -m pip install -q "torch==2.13.0" --index-url "$TORCH_INDEX_URL"
  fi
  "$venv/bin/python" -m pip install -q "torch==2.13.0" -e ".[$extras]"
  # the pretrained DCGAN face generator's weights; --no-deps: its declared
  # dependencies pull torchvision and an unpinned torch
  "$venv/bin/python" -m pip install -q --no-deps "gan-face-generate==1.1.1"
  touch "$stamp"
}

ensure_chromium() {   # the browser tests' headless Chromium, Debian's (Playwright's own download is never used)
  [ -x /usr/bin/chromium ] && return 0
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q chromium
}

ensure_xvfb() {
  command -v Xvfb >/dev/null && return 0
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q xvfb xauth libgl1 libgl1-mesa-dri libglu1-mesa
}

# liblsl must never send multicast beyond this machine (tests and CI)
export LSLAPICFG="$here/tests/lsl_api.cfg"

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  dry-run)
    ensure_venv server,record
    exec "$venv/bin/xdream" dry-run "$@" ;;
  test)
    ensure_venv server,present,record,export,dashboard,notebook,cluster,test
    ensure_xvfb
    ensure_chromium
    exec "$venv/bin/python" -m pytest "$@" ;;
  lint)
    ensure_venv server,present,record,export,dashboard,notebook,cluster,test
    "$venv/bin/ruff" check xdream server recording_adapters stimulus_client
    exec "$venv/bin/mypy" xdream server recording_adapters stimulus_client ;;
  xdream)
    ensure_venv server,present,record,export,dashboard,notebook,cluster
    exec "$venv/bin/xdream" "$@" ;;
  *)
    sed -n '2,6p' "$0" | sed 's/^# //'
    exit 2 ;;
esac
