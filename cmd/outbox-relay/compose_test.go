package main

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
	"go.yaml.in/yaml/v3"
)

// composeFile is the part of docker/compose.yaml the checks read.
type composeFile struct {
	Services map[string]struct {
		Command     []string          `yaml:"command"`
		Environment map[string]string `yaml:"environment"`
		Ports       []string          `yaml:"ports"`
		Build       any               `yaml:"build"`
	} `yaml:"services"`
}

// envNames are the OUTBOX_RELAY_* variables the command's flags read.
func envNames(cmd *cli.Command) []string {
	var names []string
	for _, f := range cmd.Flags {
		if ef, ok := f.(interface{ GetEnvVars() []string }); ok {
			names = append(names, ef.GetEnvVars()...)
		}
	}
	return names
}

// docker/compose.yaml (no Docker engine here to run it): each relay
// service's OUTBOX_RELAY_* variables are ones its command reads, the
// relay's metrics port is published, and no host port clashes with a local
// PostgreSQL; the Dockerfile's variables exist too.
func TestComposeFileMatchesTheCLI(t *testing.T) {
	data, err := os.ReadFile("../../docker/compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cf composeFile
	if err := yaml.Unmarshal(data, &cf); err != nil {
		t.Fatalf("docker/compose.yaml: %v", err)
	}
	app := newApp()
	relayServices := 0
	for name, svc := range cf.Services {
		for _, p := range svc.Ports {
			// [host_ip:]host_port:container_port
			if parts := strings.Split(p, ":"); len(parts) >= 2 && parts[len(parts)-2] == "5432" {
				t.Errorf("service %s publishes %q: host port 5432 clashes with a local PostgreSQL", name, p)
			}
		}
		if svc.Build == nil {
			continue // not the relay's image
		}
		relayServices++
		if len(svc.Command) == 0 {
			t.Errorf("service %s: no command", name)
			continue
		}
		cmd := app.Command(svc.Command[0])
		if cmd == nil {
			t.Errorf("service %s runs %q, not an outbox-relay command", name, svc.Command[0])
			continue
		}
		known := envNames(cmd)
		for v := range svc.Environment {
			if strings.HasPrefix(v, envPrefix) && !slices.Contains(known, v) {
				t.Errorf("service %s sets %s, which `outbox-relay %s` does not read", name, v, cmd.Name)
			}
		}
		if cmd.Name == "run" && !slices.ContainsFunc(svc.Ports, func(p string) bool { return strings.HasSuffix(p, ":9187") }) {
			t.Errorf("service %s does not publish the metrics port 9187 (ports %v)", name, svc.Ports)
		}
	}
	if relayServices < 2 {
		t.Errorf("found %d services built from the Dockerfile, want migrate and relay", relayServices)
	}

	df, err := os.ReadFile("../../docker/Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile(`(?m)^ENV (OUTBOX_RELAY_[A-Z_]+)=`).FindAllStringSubmatch(string(df), -1) {
		if !slices.Contains(envNames(runCommand()), m[1]) {
			t.Errorf("docker/Dockerfile sets %s, which `outbox-relay run` does not read", m[1])
		}
	}
	if _, err := os.Stat("../../.dockerignore"); err != nil {
		t.Errorf("no .dockerignore beside the build context's root: %v", err)
	}
}
