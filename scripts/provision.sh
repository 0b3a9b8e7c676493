#!/usr/bin/env bash
# Set up a Debian or Ubuntu host for mini-container: the Debian packages the engine and its tests need,
# a Python virtual environment in .venv with the project installed, and the default busybox image.
# Idempotent: a second run installs nothing new and succeeds.
#
#   sudo scripts/provision.sh              everything
#   sudo scripts/provision.sh --no-images  skip building the default images (the tests build their own)
#
# PYTHON=/path/to/python3.11+ picks the interpreter for the virtual environment.
set -euo pipefail

die() { echo "provision.sh: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root: run it with sudo"
[ -r /etc/os-release ] || die "cannot tell the distribution (no /etc/os-release); Debian 12 or Ubuntu 22.04/24.04 is needed"
. /etc/os-release
case " ${ID:-} ${ID_LIKE:-} " in
    *" debian "*|*" ubuntu "*) ;;
    *) die "unsupported distribution '${PRETTY_NAME:-$ID}': Debian 12 or Ubuntu 22.04/24.04 is needed" ;;
esac

images=1
for arg in "$@"; do
    case "$arg" in
        --no-images) images=0 ;;
        *) die "unknown option '$arg' (known: --no-images)" ;;
    esac
done

project="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$project"

# --- Debian packages ----------------------------------------------------------------------------
packages=(busybox-static util-linux iproute2 procps make)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done

# --- a Python of 3.11 or newer ------------------------------------------------------------------
python_ok() { "$1" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
pick_python() {
    for candidate in ${PYTHON:-} python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null && python_ok "$(command -v "$candidate")"; then
            command -v "$candidate"; return
        fi
    done
}
python="$(pick_python || true)"
if [ -z "$python" ]; then
    # Debian 12 ships 3.11 as python3; Ubuntu 22.04 has python3.11 beside its 3.10.
    if [ "${VERSION_ID:-}" = "22.04" ]; then missing+=(python3.11 python3.11-venv); else missing+=(python3 python3-venv); fi
fi

if [ "${#missing[@]}" -gt 0 ]; then
    echo "provision.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[ -n "$python" ] || python="$(pick_python || true)"
[ -n "$python" ] || die "no Python 3.11+ with venv found; install python3.11 and python3.11-venv"

# --- the virtual environment --------------------------------------------------------------------
if [ ! -x .venv/bin/python ] || ! python_ok .venv/bin/python; then
    echo "provision.sh: creating .venv with $python"
    rm -rf .venv
    "$python" -m venv .venv
fi
stamp=.venv/.provisioned
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "provision.sh: installing mini-container and its extras into .venv"
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e '.[dev,lessons,web]'
    touch "$stamp"
fi

# --- the default images -------------------------------------------------------------------------
if [ "$images" -eq 1 ]; then
    if ! .venv/bin/minictl images | grep -q '^busybox:latest '; then
        .venv/bin/minictl bootstrap busybox
    fi
fi
echo "provision.sh: ready"
