package kafkaserver

import (
	"os"
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

// A PEM value spans lines; in server.properties it is one line, with the
// escapes Java's Properties.load reads back.
func TestWritePropertiesEscapesLineEnds(t *testing.T) {
	path := t.TempDir() + "/server.properties"
	pem := "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"
	if err := writeProperties(path, map[string]string{"a.pem": pem, "b.path": `C:\kafka`}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := `a.pem=-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----` + "\n" + `b.path=C:\\kafka` + "\n"
	if string(b) != want {
		t.Fatalf("server.properties:\n%s\nwant:\n%s", b, want)
	}
}

// The SASL_SSL settings: SCRAM on that listener only, the key in PEM, the
// authorizer with ANONYMOUS among the super users; a SCRAM user the storage
// tool's option syntax would misread is refused.
func TestSecuritySettings(t *testing.T) {
	s := &Security{CertPEM: []byte("cert\n"), KeyPEM: []byte("key\n"), ScramUsers: map[string]string{"relay": "pw-1", "admin": "pw_2"},
		Authorizer: true, SuperUsers: []string{"admin"}}
	m, err := s.settings()
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{
		"listener.name.sasl_ssl.sasl.enabled.mechanisms":        "SCRAM-SHA-512",
		"listener.name.sasl_ssl.ssl.keystore.type":              "PEM",
		"listener.name.sasl_ssl.ssl.keystore.key":               "key",
		"listener.name.sasl_ssl.ssl.keystore.certificate.chain": "cert",
		"super.users": "User:ANONYMOUS;User:admin",
	} {
		if m[k] != v {
			t.Errorf("%s = %q, want %q", k, m[k], v)
		}
	}
	if got, want := strings.Join(s.scramArgs(), " "), "--add-scram SCRAM-SHA-512=[name=admin,password=pw_2] --add-scram SCRAM-SHA-512=[name=relay,password=pw-1]"; got != want {
		t.Errorf("storage tool options %q, want %q", got, want)
	}
	s.ScramUsers["bad"] = "a,b]"
	if _, err := s.settings(); err == nil {
		t.Error("a password with ',' and ']' was accepted")
	}
}
