#!/bin/sh
# Make sure the external tools the test suite uses are present.
#
#   promtool   (Debian package `prometheus`): tests/integration/test_ops.py runs
#              `promtool check rules|config` and `promtool test rules` on ops/.
#   faketime   (Debian package `faketime`, libfaketime): the wall-clock step tests run a
#              real scheduler under libfaketime.
#   tmux       (Debian package `tmux`): terminal tests drive a real dashboard on a pty.
#   initdb     (Debian package `postgresql`, the server binaries under
#              /usr/lib/postgresql/<version>/bin): tests/cluster/ runs a real PostgreSQL
#              server of its own in a temp folder (tests/cluster/postgres.py). The
#              package's own service is never started here; a cluster its postinst
#              started is left alone (the tests use another port and folder).
#   libfuse2   (Debian package `libfuse2`): tests/integration/test_hung_mount.py mounts a
#              FUSE file system (fusepy) that stops answering, as a dead network mount.
#   chromium   (Debian package `chromium`): tests/tui/test_web.py loads `attach --web`'s
#              page in a real headless browser (tests/browser.py, the DevTools protocol).
#
# Idempotent: when every tool is already present this does nothing and returns at once.
# Otherwise it installs the missing packages with apt-get, which needs root (CI runs it as
# root). Any failure stops the script with a message and a non-zero exit.
set -eu

say() { printf 'ensure-tools: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

# initdb is not on PATH in Debian: it lives under /usr/lib/postgresql/<version>/bin.
have_initdb() {
    for tool in /usr/lib/postgresql/*/bin/initdb; do
        [ -x "$tool" ] && return 0
    done
    command -v initdb >/dev/null 2>&1
}

have_libfuse2() {
    ldconfig -p 2>/dev/null | grep -q 'libfuse\.so\.2'
}

missing=""
command -v promtool >/dev/null 2>&1 || missing="$missing prometheus"
command -v faketime >/dev/null 2>&1 || missing="$missing faketime"
command -v tmux >/dev/null 2>&1 || missing="$missing tmux"
have_initdb || missing="$missing postgresql"
have_libfuse2 || missing="$missing libfuse2"
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
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

# The prometheus and postgresql packages' postinst may start a service where an init
# system runs; the tests only need the binaries, and nothing here starts or stops one.
command -v promtool >/dev/null 2>&1 || die "package 'prometheus' installed but promtool is not on PATH"
command -v faketime >/dev/null 2>&1 || die "package 'faketime' installed but faketime is not on PATH"
have_libfuse2 || die "package 'libfuse2' installed but ldconfig does not list libfuse.so.2"
command -v chromium >/dev/null 2>&1 || die "package 'chromium' installed but chromium is not on PATH"
have_initdb || die "package 'postgresql' installed but there is no initdb under /usr/lib/postgresql/*/bin"
say "installed:$missing"
