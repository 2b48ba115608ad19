package kafkaserver

import (
	"strings"
	"testing"
)

// A cluster id is never taken for an option by the storage tool.
func TestClusterIDNeverStartsWithADash(t *testing.T) {
	for range 5000 {
		if id := newClusterID(); id[0] == '-' || len(id) != 22 {
			t.Fatalf("cluster id %q", id)
		}
	}
}

// Start says what is missing instead of failing obscurely.
func TestStartWithoutJarsSaysWhatToRun(t *testing.T) {
	t.Setenv(EnvKafkaLibs, t.TempDir())
	_, err := Start(Config{Nodes: 1})
	if err == nil || !containsAll(err.Error(), "kafka/fetch.sh", KafkaVersion) {
		t.Fatalf("Start without jars: %v", err)
	}
}

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}
