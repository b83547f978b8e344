#!/usr/bin/env bash
# Installs parcel-sorter as a systemd service on a Debian edge box (see deploy/README.md).
#
#   sudo deploy/install.sh                      # the checkout this script is in
#   sudo deploy/install.sh parcel_sorter-0.1.0-py3-none-any.whl
#   deploy/install.sh --root /tmp/stage         # everything under /tmp/stage, nothing else
#
# What it does, on a real root: apt-get installs libzbar0 and python3-venv if missing; makes
# the system user parcel-sorter (groups dialout, video); a venv in /opt/parcel-sorter/venv
# with the package; /etc/parcel-sorter/line.toml from the packaged example only if there is
# none (never overwritten); /var/lib/parcel-sorter owned by the user; the unit in
# /etc/systemd/system (daemon-reload, not enabled: the config needs its [line_io] first).
#
# With --root DIR every path lands under DIR, and nothing outside it is touched: no apt-get,
# no user (the sysusers.d entry that declares it is written, nobody is created), no chown,
# no systemctl. Such a venv works from DIR only.
set -euo pipefail

readonly USER_NAME=parcel-sorter
readonly GROUPS_EXTRA=dialout,video
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

usage() {
    cat <<EOF
usage: install.sh [--root DIR] [--python PYTHON] [SOURCE]
  SOURCE         a parcel-sorter wheel (.whl) or source folder (default: $(dirname "$here"))
  --root DIR     install under DIR only: no apt-get, no user, no chown, no systemctl
  --python PATH  the Python 3.11+ the venv is made with (default: python3)
EOF
}

fail() {
    echo "install.sh: $*" >&2
    exit 2
}

root=""
python=python3
source_arg=""
while (($#)); do
    case $1 in
        --root)
            (($# >= 2)) || fail "--root needs a directory"
            root=$2; shift 2 ;;
        --root=*) root=${1#--root=}; shift ;;
        --python)
            (($# >= 2)) || fail "--python needs an interpreter"
            python=$2; shift 2 ;;
        --python=*) python=${1#--python=}; shift ;;
        -h|--help) usage; exit 0 ;;
        -*) usage >&2; fail "unknown option: $1" ;;
        *)
            [ -z "$source_arg" ] || fail "one SOURCE only (got $source_arg and $1)"
            source_arg=$1; shift ;;
    esac
done

source_path=${source_arg:-$(dirname "$here")}
if [[ $source_path == *.whl ]]; then
    [ -f "$source_path" ] || fail "no such wheel: $source_path"
elif [ -d "$source_path" ]; then
    [ -f "$source_path/pyproject.toml" ] || fail "$source_path is not a parcel-sorter source folder (no pyproject.toml)"
else
    fail "SOURCE must be a .whl file or a source folder: $source_path"
fi
source_path=$(cd "$(dirname "$source_path")" && pwd)/$(basename "$source_path")

if [ -n "$root" ]; then
    [ -d "$root" ] || fail "--root $root is not a directory"
    root=$(cd "$root" && pwd)
    [ "$root" != / ] || root=""
fi
staged=$([ -n "$root" ] && echo yes || echo no)
if [ "$staged" = no ] && [ "$(id -u)" -ne 0 ]; then
    fail "installing on this machine needs root (or stage it with --root DIR)"
fi
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
    || fail "$python is not a Python 3.11 or newer (pass --python)"

unit_src=$here/parcel-sorter.service
[ -f "$unit_src" ] || fail "the unit $unit_src is missing"

venv=$root/opt/parcel-sorter/venv
etc=$root/etc/parcel-sorter
state=$root/var/lib/parcel-sorter
units=$root/etc/systemd/system
sysusers=$root/usr/lib/sysusers.d

say() { echo "install.sh: $*"; }

if [ "$staged" = no ]; then
    apt_missing=()
    # grep without -q reads to the end: an early exit would SIGPIPE ldconfig and, with
    # pipefail, read as "missing"
    ldconfig -p | grep 'libzbar\.so\.0' >/dev/null || apt_missing+=(libzbar0)
    "$python" -c 'import ensurepip, venv' 2>/dev/null || apt_missing+=(python3-venv)
    if ((${#apt_missing[@]})); then
        say "installing ${apt_missing[*]} with apt-get"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${apt_missing[@]}"
    fi
fi

install -d -m 0755 "$sysusers"
cat >"$sysusers/parcel-sorter.conf" <<EOF
# the parcel-sorter controller's service user (written by deploy/install.sh)
u $USER_NAME - "parcel-sorter controller" /var/lib/parcel-sorter
m $USER_NAME dialout
m $USER_NAME video
EOF
chmod 0644 "$sysusers/parcel-sorter.conf"
if [ "$staged" = no ]; then
    if ! id -u "$USER_NAME" >/dev/null 2>&1; then
        say "creating the system user $USER_NAME"
        useradd --system --user-group --home-dir /var/lib/parcel-sorter --no-create-home \
            --shell /usr/sbin/nologin --groups "$GROUPS_EXTRA" "$USER_NAME"
    else
        usermod --append --groups "$GROUPS_EXTRA" "$USER_NAME"
    fi
fi

say "installing $source_path into $venv"
install -d -m 0755 "$(dirname "$venv")"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
if [ "$staged" = no ] && ! runuser -u "$USER_NAME" -- "$venv/bin/python" -c '' 2>/dev/null; then
    fail "$USER_NAME cannot run the venv's interpreter ($(readlink -f "$venv/bin/python")):" \
         "remove $venv and pass --python with a Python outside any private home, e.g. /usr/bin/python3"
fi
pip=("$venv/bin/python" -m pip -q --disable-pip-version-check)
wheel=$source_path
if [ -d "$source_path" ]; then
    # built from a copy: setuptools leaves build/ and *.egg-info in the folder it builds in,
    # and a stale build/lib would carry a deleted module into every later wheel
    build=$(mktemp -d)
    trap 'rm -rf "$build"' EXIT
    mkdir "$build/src"
    tar -C "$source_path" --exclude=./.git --exclude=./.venv --exclude=./build \
        --exclude='*.egg-info' --exclude=__pycache__ -cf - . | tar -C "$build/src" -xf -
    "${pip[@]}" wheel --no-deps -w "$build" "$build/src" >/dev/null
    wheel=$(echo "$build"/parcel_sorter-*.whl)
fi
"${pip[@]}" install "$wheel"
# the same version again is "already satisfied": put this build in place all the same
"${pip[@]}" install --no-deps --force-reinstall "$wheel"
"$venv/bin/parcel-sorter" --help >/dev/null || fail "the installed parcel-sorter does not start"

example=$("$venv/bin/python" -c \
    'from controller.app.example_line import EXAMPLE_CONFIG; print(EXAMPLE_CONFIG)')
[ -f "$example" ] || fail "the package carries no example config ($example)"
install -d -m 0755 "$etc"
if [ -e "$etc/line.toml" ]; then
    say "keeping $etc/line.toml"
else
    say "writing $etc/line.toml from the example: give it its [line_io] before starting"
    install -m 0640 "$example" "$etc/line.toml"
    [ "$staged" = yes ] || chgrp "$USER_NAME" "$etc/line.toml"
fi

install -d -m 0750 "$state"
[ "$staged" = yes ] || chown "$USER_NAME:$USER_NAME" "$state"

install -d -m 0755 "$units"
install -m 0644 "$unit_src" "$units/parcel-sorter.service"

if [ "$staged" = no ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi
say "done. Then: edit $etc/line.toml ([line_io]), '$venv/bin/parcel-sorter check-config $etc/line.toml', 'systemctl enable --now parcel-sorter'"
