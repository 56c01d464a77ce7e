#!/bin/sh
# Make sure the external tools the test suite uses are present.
#
#   promtool  (Debian package `prometheus`): tests/integration/test_ops.py runs
#             `promtool check rules|config` and `promtool test rules` on ops/.
#
# Idempotent: when promtool is already on PATH this does nothing and returns at once.
# Otherwise it installs the package with apt-get, which needs root (CI runs it as root).
# Any failure stops the script with a message and a non-zero exit: the tests need the tool.
set -eu

say() { printf 'ensure-tools: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

if command -v promtool >/dev/null 2>&1; then
    exit 0
fi

command -v apt-get >/dev/null 2>&1 \
    || die "promtool is missing and apt-get is not available; install Prometheus' promtool by hand"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        die "promtool is missing and installing it needs root: run 'apt-get install prometheus' as root"
    fi
fi

say "promtool not found; installing Debian package 'prometheus'"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update || die "apt-get update failed"
$SUDO apt-get install -y --no-install-recommends prometheus || die "apt-get install prometheus failed"

# The package's postinst may start a prometheus service where an init system runs;
# the tests only need the promtool binary.
command -v promtool >/dev/null 2>&1 || die "package 'prometheus' installed but promtool is not on PATH"
say "installed $(promtool --version 2>&1 | head -n 1)"
