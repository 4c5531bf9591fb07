#!/bin/sh
# compare.sh: benchmark Wormhole against nfs-ganesha on this machine, with
# the local disk as reference (tests/bench/cmd/compare does the work).
#
# Needs root and, installed beforehand (`make bench-deps` does it):
#   apt-get install nfs-ganesha nfs-ganesha-vfs rpcbind
# and a built wormhole binary (make build, or WH_BIN=path).
#
# Usage: tests/bench/compare.sh [--size 256MiB] [--rounds 2] [--streams 1] ...
# Everything it starts is stopped and its temporary files removed, also on
# failure or interruption.
set -eu
cd "$(dirname "$0")/../.."
tmp=$(mktemp -d)
pid=
cleanup() {
	if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
go build -o "$tmp/compare" ./tests/bench/cmd/compare
"$tmp/compare" --wormhole "${WH_BIN:-bin/wormhole}" "$@" &
pid=$!
rc=0
wait "$pid" || rc=$?
pid=
exit "$rc"
