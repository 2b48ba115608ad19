#!/usr/bin/env bash
# Runs staticcheck, at the version pinned here, with the arguments given
# (`make lint` passes ./...). It is installed into Go's bin directory
# (GOBIN, else the first GOPATH entry's bin) when it is missing there or is
# another version, so a fresh machine needs nothing first and a second run
# starts at once. With --install-only it installs and exits: scripts/setup.sh
# does that.
set -euo pipefail
cd "$(dirname "$0")/.."

version=v0.8.2
GO="${GO:-go}"

bin="$("$GO" env GOBIN)"
if [ -z "$bin" ]; then
	bin="$("$GO" env GOPATH | cut -d: -f1)/bin"
fi
staticcheck="$bin/staticcheck"

# `staticcheck -version` prints e.g. "staticcheck 2026.2.2 (0.8.2)".
if ! [ -x "$staticcheck" ] || ! "$staticcheck" -version 2>/dev/null | grep -qF "(${version#v})"; then
	echo "staticcheck: installing honnef.co/go/tools/cmd/staticcheck@$version into $bin" >&2
	# go install replaces only a file it recognises as a Go binary.
	rm -f "$staticcheck"
	GOBIN="$bin" "$GO" install "honnef.co/go/tools/cmd/staticcheck@$version"
fi

if [ "${1:-}" = --install-only ]; then
	exit 0
fi
exec "$staticcheck" "$@"
