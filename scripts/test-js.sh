#!/usr/bin/env bash
# The JavaScript client's tests (clients/js): node:test suites against the
# real lockservice binary, built from this checkout and started in embedded
# mode on a free port by each suite. Needs Node.js 18+ and npm; when they
# are missing this installs Debian's nodejs and npm with apt-get where it
# can (as test.sh does for redis-server) and stops with a clear message
# where it cannot. Then it installs the package's dependencies (npm ci).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "test-js.sh: ${missing[*]} not found; installing with apt-get" >&2
  SUDO=""
  if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; fi
  if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || [ -n "$SUDO" ]; }; then
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null || {
      echo "test-js.sh: apt-get could not install ${missing[*]}; install Node.js 18+ with npm, then rerun" >&2
      exit 1
    }
  else
    echo "test-js.sh: ${missing[*]} not installed and cannot be installed here (needs apt-get as root or passwordless sudo)." >&2
    echo "test-js.sh: install Node.js 18+ with npm (e.g. brew install node), then rerun." >&2
    exit 1
  fi
fi
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 18 ]; then
  echo "test-js.sh: Node.js $(node --version) is too old; clients/js needs 18 or later" >&2
  exit 1
fi

bindir=$(mktemp -d)
trap 'rm -rf "$bindir"' EXIT
go build -o "$bindir/lockservice" ./cmd/lockservice

cd clients/js
npm ci --no-audit --no-fund --loglevel=error
LOCKSERVICE_BIN="$bindir/lockservice" npm test
