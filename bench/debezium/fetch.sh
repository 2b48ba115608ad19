#!/usr/bin/env bash
# Puts Kafka Connect and Debezium's PostgreSQL connector (the versions in
# bench/debezium/pom.xml) into
#   ${XDG_CACHE_HOME:-$HOME/.cache}/outbox-relay/debezium/<debezium>-connect-<connect>/
# for the benchmark's Debezium rows and `make compat-debezium`
# (bench/peers.go reads the same directory). Needs Java 17+ and Maven.
# Idempotent: a complete cache is left alone. OUTBOX_RELAY_DEBEZIUM_LIBS
# names another directory instead (the bench reads the same variable).
set -euo pipefail
export LC_ALL=C

here="$(cd "$(dirname "$0")" && pwd)"
prop() { sed -n "s:.*<$1>\(.*\)</$1>.*:\1:p" "$here/pom.xml"; }
connect="$(prop connect.version)"
debezium="$(prop debezium.version)"
if [ -z "$connect" ] || [ -z "$debezium" ]; then
	echo "bench/debezium/fetch.sh: no <connect.version> or <debezium.version> in $here/pom.xml" >&2
	exit 1
fi
dest="${OUTBOX_RELAY_DEBEZIUM_LIBS:-${XDG_CACHE_HOME:-$HOME/.cache}/outbox-relay/debezium/$debezium-connect-$connect}"
marker="$dest/.complete"

if [ -f "$marker" ]; then
	echo "Debezium $debezium on Kafka Connect $connect: $(find "$dest" -name '*.jar' | wc -l) jars in $dest (cached)"
	exit 0
fi
for tool in java mvn; do
	if ! command -v "$tool" >/dev/null 2>&1; then
		echo "bench/debezium/fetch.sh: $tool not found; install Java 17+ and Maven" \
			"(Debian: apt-get install openjdk-17-jre-headless maven)" >&2
		exit 1
	fi
done

# A fresh directory beside the destination, renamed into place: an
# interrupted fetch never leaves a half-filled cache.
mkdir -p "$(dirname "$dest")"
tmp="$(mktemp -d "$(dirname "$dest")/.fetch.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
if ! out="$(mvn -B -q -f "$here/pom.xml" dependency:copy-dependencies \
	-DincludeScope=runtime -DoutputDirectory="$tmp" 2>&1)"; then
	printf '%s\n' "$out" >&2
	echo "bench/debezium/fetch.sh: Maven could not resolve Kafka Connect $connect and Debezium $debezium (see above)" >&2
	exit 1
fi
for jar in "connect-runtime-$connect.jar" "debezium-connector-postgres-$debezium.jar" "debezium-connect-plugins-$debezium.jar"; do
	if [ ! -f "$tmp/$jar" ]; then
		echo "bench/debezium/fetch.sh: Maven copied no $jar into $tmp" >&2
		exit 1
	fi
done
chmod 755 "$tmp"
touch "$tmp/.complete"
rm -rf "$dest"
mv "$tmp" "$dest"
trap - EXIT
echo "Debezium $debezium on Kafka Connect $connect: $(find "$dest" -name '*.jar' | wc -l) jars ($(du -sh "$dest" | cut -f1)) in $dest"
