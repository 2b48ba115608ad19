#!/usr/bin/env bash
# Puts Apache Kafka's broker jars (the version in kafka/pom.xml) into
#   ${XDG_CACHE_HOME:-$HOME/.cache}/outbox-relay/kafka/<version>/
# for the tests that run against Kafka itself (test/kafkatest/apache.go).
# Needs Java 17+ and Maven. Idempotent: a complete cache is left alone, so
# running it again costs nothing. OUTBOX_RELAY_KAFKA_LIBS names another
# directory instead (the tests read the same variable).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/pom.xml")"
if [ -z "$version" ]; then
	echo "kafka/fetch.sh: no <kafka.version> in $here/pom.xml" >&2
	exit 1
fi
dest="${OUTBOX_RELAY_KAFKA_LIBS:-${XDG_CACHE_HOME:-$HOME/.cache}/outbox-relay/kafka/$version}"
# The tests look for this file: a directory without it is a fetch that
# did not finish.
marker="$dest/.complete"

if [ -f "$marker" ]; then
	echo "Apache Kafka $version: $(find "$dest" -name '*.jar' | wc -l) jars in $dest (cached)"
	exit 0
fi

for tool in java mvn; do
	if ! command -v "$tool" >/dev/null 2>&1; then
		echo "kafka/fetch.sh: $tool not found; install Java 17+ and Maven" \
			"(Debian: apt-get install openjdk-17-jre-headless maven)" >&2
		exit 1
	fi
done

# Copy into a fresh directory beside the destination, then rename it into
# place: an interrupted fetch never leaves a half-filled cache behind.
mkdir -p "$(dirname "$dest")"
tmp="$(mktemp -d "$(dirname "$dest")/.fetch-$version.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
# Maven's output only when it fails (it prints terminal escapes otherwise).
if ! out="$(mvn -B -q -f "$here/pom.xml" dependency:copy-dependencies \
	-DincludeScope=runtime -DoutputDirectory="$tmp" 2>&1)"; then
	printf '%s\n' "$out" >&2
	echo "kafka/fetch.sh: Maven could not resolve Apache Kafka $version (see above)" >&2
	exit 1
fi
if [ ! -f "$tmp/kafka_2.13-$version.jar" ]; then
	echo "kafka/fetch.sh: Maven copied no kafka_2.13-$version.jar into $tmp" >&2
	exit 1
fi
chmod 755 "$tmp"
touch "$tmp/.complete"
rm -rf "$dest"
mv "$tmp" "$dest"
trap - EXIT
echo "Apache Kafka $version: $(find "$dest" -name '*.jar' | wc -l) jars ($(du -sh "$dest" | cut -f1)) in $dest"
