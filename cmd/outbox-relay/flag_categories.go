package main

import (
	"reflect"
	"strings"

	"github.com/urfave/cli/v2"
)

// The headings of `run --help` (urfave/cli lists them in alphabetical
// order, which puts General first).
const (
	catGeneral    = "General"
	catPostgres   = "PostgreSQL"
	catOutbox     = "Outbox table"
	catKafka      = "Kafka (--sink kafka)"
	catNATS       = "NATS JetStream (--sink nats)"
	catRabbitMQ   = "RabbitMQ (--sink rabbitmq)"
	catRedis      = "Redis Streams (--sink redis)"
	catWebhook    = "Webhook (--sink webhook)"
	catMonitoring = "Monitoring and logs"
)

// flagCategory places the flags whose name does not say where they belong;
// a flag named after its sink (kafka-*, nats-*...) goes under that sink,
// any other under General.
var flagCategory = map[string]string{
	"pg-url":             catPostgres,
	"slot":               catPostgres,
	"publication":        catPostgres,
	"create-slot":        catPostgres,
	"failover":           catPostgres,
	"status-interval":    catPostgres,
	"receive-timeout":    catPostgres,
	"heartbeat-interval": catPostgres,

	"table":          catOutbox,
	"columns":        catOutbox,
	"compat":         catOutbox,
	"header-columns": catOutbox,
	"trace-column":   catOutbox,
	"message-prefix": catOutbox,
	"prune-after":    catOutbox,

	"exactly-once": catKafka,

	"metrics-addr":       catMonitoring,
	"slot-poll-interval": catMonitoring,
	"log-format":         catMonitoring,
	"log-level":          catMonitoring,
}

var prefixCategory = []struct{ prefix, category string }{
	{"kafka-", catKafka},
	{"nats-", catNATS},
	{"rabbitmq-", catRabbitMQ},
	{"redis-", catRedis},
	{"webhook-", catWebhook},
}

// categoryOf is the help heading of the flag called name.
func categoryOf(name string) string {
	if c, ok := flagCategory[name]; ok {
		return c
	}
	for _, p := range prefixCategory {
		if strings.HasPrefix(name, p.prefix) {
			return p.category
		}
	}
	return catGeneral
}

// categorized sets each flag's Category (a field every urfave/cli flag
// type has) from categoryOf, unless the flag sets one itself.
func categorized(flags []cli.Flag) []cli.Flag {
	for _, f := range flags {
		v := reflect.ValueOf(f)
		if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
			continue
		}
		field := v.Elem().FieldByName("Category")
		if field.IsValid() && field.Kind() == reflect.String && field.CanSet() && field.String() == "" {
			field.SetString(categoryOf(f.Names()[0]))
		}
	}
	return flags
}
