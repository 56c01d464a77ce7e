#!/bin/sh
# Make sure the external tools the test suite uses are present.
#
#   promtool   (Debian package `prometheus`): tests/integration/test_ops.py runs
#              `promtool check rules|config` and `promtool test rules` on ops/.
#   faketime   (Debian package `faketime`, libfaketime): the wall-clock step tests run a
#              real scheduler under libfaketime.
#   tmux       (Debian package `tmux`): terminal tests drive a real dashboard on a pty.
#
# Idempotent: when every tool is already present this does nothing and returns at once.
# Otherwise it installs the missing packages with apt-get, which needs root (CI runs it as
# root). Any failure stops the script with a message and a non-zero exit.
set -eu

say() { printf 'ensure-tools: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

missing=""
command -v promtool >/dev/null 2>&1 || missing="$missing prometheus"
command -v faketime >/dev/null 2>&1 || missing="$missing faketime"
command -v tmux >/dev/null 2>&1 || missing="$missing tmux"
[ -z "$missing" ] && exit 0

command -v apt-get >/dev/null 2>&1 \
    || die "missing:$missing and apt-get is not available; install them by hand"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        die "missing:$missing; installing needs root: run 'apt-get install$missing' as root"
    fi
fi

say "installing Debian packages:$missing"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update || die "apt-get update failed"
# shellcheck disable=SC2086
$SUDO apt-get install -y --no-install-recommends $missing || die "apt-get install$missing failed"

# The prometheus package's postinst may start a service where an init system runs;
# the tests only need the promtool binary.
command -v promtool >/dev/null 2>&1 || die "package 'prometheus' installed but promtool is not on PATH"
command -v faketime >/dev/null 2>&1 || die "package 'faketime' installed but faketime is not on PATH"
say "installed:$missing"
