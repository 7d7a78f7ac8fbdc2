#!/usr/bin/env bash
# The project's test command (README "Development"): every Go test, with
# the race detector, against real servers, then the JavaScript client's
# tests (scripts/test-js.sh). Arguments go to go test. The Redis tests need
# redis-server (7.0+); when it is missing this installs it with apt-get
# where it can and stops with a clear message where it cannot. Redis tests
# never skip. It fails when either the Go or the JavaScript tests fail.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
  echo "test.sh: redis-server not found; installing it (apt-get install -y redis-server)" >&2
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; fi
  fi
  if command -v apt-get >/dev/null 2>&1 && { [ -z "$SUDO" ] && [ "$(id -u)" = 0 ] || [ -n "$SUDO" ]; }; then
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq redis-server >/dev/null || {
      echo "test.sh: apt-get could not install redis-server; install Redis 7+ so that redis-server is on PATH, then rerun" >&2
      exit 1
    }
  else
    echo "test.sh: redis-server is not installed and cannot be installed here (needs apt-get as root or passwordless sudo)." >&2
    echo "test.sh: install Redis 7+ so that redis-server is on PATH (e.g. brew install redis), then rerun." >&2
    exit 1
  fi
fi
# Debian starts a system redis-server on 6379 after installing; the tests
# start their own on free ports and do not use it.

go_status=0
go test -race -count=1 -timeout 20m "$@" ./... || go_status=$?
js_status=0
scripts/test-js.sh || js_status=$?
if [ "$go_status" != 0 ] || [ "$js_status" != 0 ]; then
  echo "test.sh: FAILED (go test exit $go_status, JavaScript tests exit $js_status)" >&2
  exit 1
fi
