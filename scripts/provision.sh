#!/usr/bin/env bash
# Set up a Debian 12 or Ubuntu 22.04/24.04 host (or the workshop VM) for mini-container: the Debian
# packages the engine and its tests need, a Python virtual environment with the project installed, the
# default images, and, where systemd runs, the workshop's services (JupyterLab on lessons/, and the
# visualizer once webapp/ holds a Flask app).
# Idempotent: a second run installs nothing new, changes no file, and succeeds.
#
#   sudo scripts/provision.sh                      everything
#   sudo scripts/provision.sh --no-images          skip building the default images
#   sudo scripts/provision.sh --listen ADDRESS     where the services listen (default 127.0.0.1; the VM's
#                                                  Vagrantfile says where its forwarded ports arrive)
#   sudo scripts/provision.sh --venv DIR           the virtual environment (default: .venv in the project)
#
# PYTHON=/path/to/python3.11+ picks the interpreter for the virtual environment.
# MINI_CONTAINER_OS_RELEASE=FILE reads FILE instead of /etc/os-release (tests/test_provision.py uses it).
#
# Bad input changes nothing: without root, on an unsupported distribution, or with an unknown option,
# the script says so in one line and exits 1 before it installs or writes anything.
set -euo pipefail

die() { echo "provision.sh: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root: run it with sudo"

# --- the distribution: Debian 12+, Ubuntu 22.04+, or a derivative of one of them -------------------------
os_release="${MINI_CONTAINER_OS_RELEASE:-/etc/os-release}"
needed="Debian 12 or Ubuntu 22.04/24.04 is needed"
[ -r "$os_release" ] || die "cannot tell the distribution (no $os_release): $needed"
ID="" ID_LIKE="" VERSION_ID="" VERSION_CODENAME="" UBUNTU_CODENAME="" PRETTY_NAME=""
# shellcheck source=/dev/null
. "$os_release"
supported() {
    case "$ID" in
        debian) [ -z "$VERSION_ID" ] || [ "${VERSION_ID%%.*}" -ge 12 ] 2>/dev/null ;;  # none: testing
        ubuntu) [ "${VERSION_ID%%.*}" -ge 22 ] 2>/dev/null ;;
        *) case " $ID_LIKE " in  # a derivative: judged by the release it is built on
               *" ubuntu "*) case "$UBUNTU_CODENAME" in jammy|noble) ;; *) return 1 ;; esac ;;
               *" debian "*) case "$VERSION_CODENAME" in bookworm|trixie) ;; *) return 1 ;; esac ;;
               *) return 1 ;;
           esac ;;
    esac
}
supported || die "unsupported distribution '${PRETTY_NAME:-${ID:-unknown}}': $needed"

images=1
listen=127.0.0.1
venv=""
while [ "$#" -gt 0 ]; do
    case "$1" in
        --no-images) images=0 ;;
        --listen) [ -n "${2:-}" ] || die "--listen needs an address"; listen="$2"; shift ;;
        --venv) [ -n "${2:-}" ] || die "--venv needs a directory"; venv="$2"; shift ;;
        *) die "unknown option '$1' (known: --no-images, --listen ADDRESS, --venv DIR)" ;;
    esac
    shift
done

project="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$project"
venv="$(realpath -m "${venv:-$project/.venv}")"

# --- Debian packages ------------------------------------------------------------------------------------
# The engine: busybox-static (the busybox image), util-linux, iproute2, procps. The tests: make, a local
# registry (docker-registry) seeded by skopeo, umoci and runc to compare with, docker.io, nftables, iperf3,
# debootstrap (the Debian image). The VM test (scripts/vm/): qemu, e2fsprogs (mkfs.ext4 -d), and Debian's
# archive keyring, which debootstrap needs on Ubuntu too.
packages=(busybox-static util-linux iproute2 procps make curl docker-registry skopeo umoci runc docker.io
          nftables iperf3 debootstrap debian-archive-keyring e2fsprogs qemu-system-x86 qemu-utils)
# A host with Docker's own packages (docker-ce, containerd.io) already has docker and runc: Debian's
# docker.io and runc conflict with them, and installing them would remove Docker CE.
declare -A provided_by=([docker.io]=dockerd [runc]=runc)
missing=()
for package in "${packages[@]}"; do
    command_name="${provided_by[$package]:-}"
    if [ -n "$command_name" ] && command -v "$command_name" >/dev/null; then continue; fi
    status="$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)"
    [ "$status" = "install ok installed" ] || missing+=("$package")
done

# --- a Python of 3.11 or newer --------------------------------------------------------------------------
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
    if [ "$VERSION_ID" = "22.04" ] || [ "$UBUNTU_CODENAME" = "jammy" ]; then
        missing+=(python3.11 python3.11-venv)
    else
        missing+=(python3 python3-venv)
    fi
fi

if [ "${#missing[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Every package must be installable before any is installed (Ubuntu keeps several in universe).
    unavailable=()
    for package in "${missing[@]}"; do
        apt-cache show "$package" >/dev/null 2>&1 || unavailable+=("$package")
    done
    [ "${#unavailable[@]}" -eq 0 ] || die "no installable candidate for ${unavailable[*]} in the apt" \
        "sources (on Ubuntu: enable the universe component, then run this again); nothing was installed"
    echo "provision.sh: installing ${missing[*]}"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[ -n "$python" ] || python="$(pick_python || true)"
[ -n "$python" ] || die "no Python 3.11+ with venv found; install python3.11 and python3.11-venv"

# --- the virtual environment ----------------------------------------------------------------------------
if [ ! -x "$venv/bin/python" ] || ! python_ok "$venv/bin/python"; then
    echo "provision.sh: creating $venv with $python"
    rm -rf "$venv"
    "$python" -m venv "$venv"
fi
stamp="$venv/.provisioned"  # the sha256 of the pyproject.toml last installed (not its mtime: a fresh
wanted="$(sha256sum pyproject.toml | cut -d' ' -f1)"  # clone or copy of the same file is newer, not new)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    echo "provision.sh: installing mini-container and its extras into $venv"
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q -e '.[dev,lessons,web]'
    echo "$wanted" > "$stamp"
fi

# --- the default images ---------------------------------------------------------------------------------
if [ "$images" -eq 1 ]; then
    defaults=(busybox)
    # `bootstrap debian` (debootstrap from the mirror apt uses) where this version of minictl has it
    [[ "$("$venv/bin/minictl" bootstrap --help 2>&1)" != *debian* ]] || defaults+=(debian)
    for image in "${defaults[@]}"; do
        "$venv/bin/minictl" image inspect "$image" >/dev/null 2>&1 || "$venv/bin/minictl" bootstrap "$image"
    done
fi

# --- the workshop's services ----------------------------------------------------------------------------
# Only where systemd is the init (its runtime directory exists): not in a chroot or a container.
token_url=""
if [ -d /run/systemd/system ]; then
    # JupyterLab keeps its token: made once, kept in a root-only file the units read.
    env_file=/etc/mini-container/workshop.env
    if [ ! -f "$env_file" ]; then
        install -d -m 0700 /etc/mini-container
        (umask 077; echo "JUPYTER_TOKEN=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')" > "$env_file")
    fi
    reload=0 changed=()
    for unit in mini-container-lab mini-container-visualizer; do
        rendered="$(sed -e "s|@PROJECT@|$project|g" -e "s|@VENV@|$venv|g" -e "s|@LISTEN@|$listen|g" \
                        "scripts/systemd/$unit.service")"
        if [ "$rendered" != "$(cat "/etc/systemd/system/$unit.service" 2>/dev/null)" ]; then
            printf '%s\n' "$rendered" > "/etc/systemd/system/$unit.service"
            reload=1 changed+=("$unit")
        fi
    done
    [ "$reload" -eq 0 ] || systemctl daemon-reload
    for unit in mini-container-lab mini-container-visualizer; do
        systemctl is-enabled --quiet "$unit" || systemctl enable --quiet "$unit"
        if [[ " ${changed[*]} " == *" $unit "* ]]; then
            echo "provision.sh: (re)starting $unit"
            systemctl restart "$unit"
        else
            systemctl start "$unit"  # nothing if it runs; the visualizer's condition is checked again
        fi
    done
    token_url="http://127.0.0.1:8888/lab?token=$(sed -n 's/^JUPYTER_TOKEN=//p' "$env_file")"
else
    echo "provision.sh: systemd is not running here: no service installed (make workshop starts JupyterLab)"
fi

echo "provision.sh: ready"
[ -z "$token_url" ] || echo "provision.sh: JupyterLab: $token_url"
