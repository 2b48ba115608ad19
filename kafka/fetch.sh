#!/usr/bin/env bash
# Puts Apache Kafka's broker jars (the version in kafka/pom.xml) into
#   ${XDG_CACHE_HOME:-$HOME/.cache}/outbox-relay/kafka/<version>/
# for the tests that run against Kafka itself (internal/kafkaserver/kafkaserver.go),
# with a class-data-sharing archive that makes each node start faster.
# Needs Java 17+ and Maven. Idempotent: a complete cache is left alone, so
# running it again costs nothing. OUTBOX_RELAY_KAFKA_LIBS names another
# directory instead (the tests read the same variable).
set -euo pipefail
# Globs sorted bytewise, as Go's filepath.Glob sorts: the archive is valid
# only for the classpath it was made with, jar by jar.
export LC_ALL=C

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

for tool in java mvn; do
	if ! command -v "$tool" >/dev/null 2>&1; then
		echo "kafka/fetch.sh: $tool not found; install Java 17+ and Maven" \
			"(Debian: apt-get install openjdk-17-jre-headless maven)" >&2
		exit 1
	fi
done

fetch_jars() {
	# Copy into a fresh directory beside the destination, then rename it
	# into place: an interrupted fetch never leaves a half-filled cache.
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
	rm -rf "$dest"
	mv "$tmp" "$dest"
	trap - EXIT
}

# make_archive starts one node with -XX:ArchiveClassesAtExit and stops it
# once it serves: the JVM then writes the classes it loaded to kafka.jsa,
# which the tests' nodes map instead of loading and verifying them again
# (about half a node's startup CPU). Best effort: a node starts without it.
make_archive() {
	local work port cp pid i
	work="$(mktemp -d)"
	port=$((20000 + RANDOM % 10000))
	cp="$(printf '%s:' "$dest"/*.jar)"
	cp="${cp%:}"
	cat >"$work/server.properties" <<-EOF
		process.roles=broker,controller
		node.id=1
		listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$((port + 1))
		advertised.listeners=PLAINTEXT://127.0.0.1:$port
		controller.listener.names=CONTROLLER
		listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
		controller.quorum.voters=1@127.0.0.1:$((port + 1))
		log.dirs=$work/data
		offsets.topic.replication.factor=1
	EOF
	cat >"$work/log4j2.properties" <<-EOF
		appender.out.type = Console
		appender.out.name = out
		appender.out.layout.type = PatternLayout
		appender.out.layout.pattern = %m%n
		rootLogger.level = info
		rootLogger.appenderRef.out.ref = out
	EOF
	local flags=(-Xms128m -Xmx384m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:-UsePerfData
		"-Dlog4j2.configurationFile=$work/log4j2.properties" "-Djava.io.tmpdir=$work" -cp "$cp")
	if java "${flags[@]}" kafka.tools.StorageTool format --cluster-id "$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | cut -c1-22)" \
		--config "$work/server.properties" >"$work/kafka.log" 2>&1; then
		java "${flags[@]}" -XX:ArchiveClassesAtExit="$dest/kafka.jsa.tmp" kafka.Kafka "$work/server.properties" >>"$work/kafka.log" 2>&1 &
		pid=$!
		for ((i = 0; i < 1200; i++)); do
			if grep -q 'Kafka Server started' "$work/kafka.log" || ! kill -0 "$pid" 2>/dev/null; then break; fi
			sleep 0.1
		done
		kill -TERM "$pid" 2>/dev/null || true
		wait "$pid" || true
	fi
	if [ -s "$dest/kafka.jsa.tmp" ] && grep -q 'Kafka Server started' "$work/kafka.log"; then
		mv "$dest/kafka.jsa.tmp" "$dest/kafka.jsa"
	else
		rm -f "$dest/kafka.jsa.tmp"
		echo "kafka/fetch.sh: no class-data-sharing archive (nodes start slower); the node's log ends:" >&2
		tail -n 20 "$work/kafka.log" >&2
	fi
	rm -rf "$work"
}

if [ -f "$marker" ]; then
	echo "Apache Kafka $version: $(find "$dest" -name '*.jar' | wc -l) jars in $dest (cached)"
	exit 0
fi
fetch_jars
make_archive
touch "$marker"
echo "Apache Kafka $version: $(find "$dest" -name '*.jar' | wc -l) jars ($(du -sh "$dest" | cut -f1)) in $dest"
