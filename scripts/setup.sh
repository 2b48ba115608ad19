#!/usr/bin/env bash
# Installs what the tests need and is missing, on Debian or Ubuntu with Go:
#   gcc (go test -race needs cgo), PostgreSQL server binaries, kcat,
#   redis-server, nats-server, rabbitmq-server, Java 17+ and Maven,
#   Apache Kafka's jars (kafka/fetch.sh, into ~/.cache), and npm with
#   PostgreSQL 16, 17 and 18 (scripts/fetch-postgres.sh, into ~/.cache),
#   and staticcheck for make lint (scripts/staticcheck.sh, into Go's bin
#   directory).
# Idempotent and quick when everything is there: `make setup` runs it, and
# `make test` and .ci/run run `make setup` first.
#
# It installs binaries only and starts nothing: the tests start their own
# servers on free ports (internal/pgserver, internal/brokerserver,
# internal/kafkaserver). Installing needs root or sudo; without them it
# lists what is missing and fails.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
	export PATH="/usr/local/go/bin:$PATH"
fi
command -v go >/dev/null 2>&1 || {
	echo "setup: go not found (on PATH or at /usr/local/go/bin); install Go from https://go.dev/dl/" >&2
	exit 1
}

# Debian package names of what is missing.
missing=()
need() { # command-or-path package
	if [[ "$1" == /* ]]; then
		compgen -G "$1" >/dev/null && return
	else
		command -v "$1" >/dev/null 2>&1 && return
	fi
	missing+=("$2")
}

need gcc gcc
# cgo links against the C library: gcc alone (without its recommends) lacks it.
need /usr/include/stdio.h libc6-dev
# The PostgreSQL helper finds server binaries through OUTBOX_RELAY_PG_BIN,
# pg_config or /usr/lib/postgresql/*/bin (internal/pgserver).
if ! { [ -n "${OUTBOX_RELAY_PG_BIN:-}" ] && [ -x "$OUTBOX_RELAY_PG_BIN/initdb" ]; }; then
	need '/usr/lib/postgresql/*/bin/initdb' postgresql
fi
need kcat kcat
need redis-server redis-server
[ -x /usr/sbin/nats-server ] || need nats-server nats-server
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || need rabbitmq-server rabbitmq-server
# PostgreSQL 16, 17 and 18 come from npm (scripts/fetch-postgres.sh).
need npm npm
need java openjdk-17-jre-headless
need mvn maven

if [ ${#missing[@]} -gt 0 ]; then
	sudo=""
	if [ "$(id -u)" -ne 0 ]; then
		if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
			sudo="sudo"
		else
			echo "setup: missing ${missing[*]}; install them as root:" >&2
			echo "  apt-get install ${missing[*]}" >&2
			exit 1
		fi
	fi
	$sudo apt-get update -qq
	# Debian 13 has no Java 17 package; its default runtime (21) does.
	for i in "${!missing[@]}"; do
		if [ "${missing[$i]}" = openjdk-17-jre-headless ] &&
			! apt-cache policy openjdk-17-jre-headless 2>/dev/null | grep -q 'Candidate: [0-9]'; then
			missing[i]=default-jre-headless
		fi
	done
	echo "setup: installing ${missing[*]} (apt)"
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# PostgreSQL refuses to run as root; as root the helper runs it as the
# postgres OS user, which the Debian package creates.
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
	echo "setup: running as root but there is no postgres OS user to run test servers as;" \
		"create one (useradd --system postgres) or run as an unprivileged user" >&2
	exit 1
fi

java_major="$(java -XshowSettings:properties -version 2>&1 |
	sed -n 's/^ *java.specification.version = \([0-9]*\).*/\1/p')"
if [ -z "$java_major" ] || [ "$java_major" -lt 17 ]; then
	echo "setup: java on PATH is version ${java_major:-unknown}; Apache Kafka 4 needs 17 or later" \
		"(apt-get install openjdk-17-jre-headless)" >&2
	exit 1
fi

bash kafka/fetch.sh
bash scripts/fetch-postgres.sh
# make lint's staticcheck, into Go's bin directory (a no-op when there).
bash scripts/staticcheck.sh --install-only
echo "setup: ready ($(go version | cut -d' ' -f3), java $java_major, everything the tests start is installed)"
