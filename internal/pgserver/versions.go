package pgserver

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// EnvCache names the environment variable that moves the cache of server
// binaries per major version (scripts/fetch-postgres.sh fills it).
const EnvCache = "OUTBOX_RELAY_PG_CACHE"

// CacheDir is where scripts/fetch-postgres.sh puts the server binaries of
// other major versions than the system's, one directory per major version
// (<CacheDir>/17/bin/initdb): $OUTBOX_RELAY_PG_CACHE, else
// $XDG_CACHE_HOME/outbox-relay/postgres, else ~/.cache/outbox-relay/postgres.
func CacheDir() string {
	if d := os.Getenv(EnvCache); d != "" {
		return d
	}
	base := os.Getenv("XDG_CACHE_HOME")
	if base == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return ""
		}
		base = filepath.Join(home, ".cache")
	}
	return filepath.Join(base, "outbox-relay", "postgres")
}

// BinDirFor finds the server binaries of one major version: the system's
// (Debian's /usr/lib/postgresql/<major>/bin) if installed, else the cache
// (see CacheDir). The error says how to get them.
func BinDirFor(major int) (string, error) {
	system := filepath.Join("/usr/lib/postgresql", strconv.Itoa(major), "bin")
	if hasInitdb(system) {
		return system, nil
	}
	cached := filepath.Join(CacheDir(), strconv.Itoa(major))
	bin := filepath.Join(cached, "bin")
	// A cached version without its marker is a fetch that did not finish.
	if _, err := os.Stat(filepath.Join(cached, ".complete")); err == nil && hasInitdb(bin) {
		return bin, nil
	}
	return "", fmt.Errorf("%w: no PostgreSQL %d in %s or %s; run scripts/fetch-postgres.sh %d "+
		"(or apt-get install postgresql-%d)", ErrBinariesNotFound, major, system, bin, major, major)
}

// Major returns the major version of the server binaries in binDir, from
// `postgres --version` ("postgres (PostgreSQL) 17.10" is 17).
func Major(binDir string) (int, error) {
	out, err := runVersion(filepath.Join(binDir, "postgres"))
	if err != nil {
		return 0, err
	}
	f := strings.Fields(out)
	if len(f) == 0 {
		return 0, fmt.Errorf("postgres --version in %s printed nothing", binDir)
	}
	v := f[len(f)-1]
	if i := strings.IndexAny(v, ".bdr"); i > 0 { // 17.10, 18beta1, 18rc1, 18devel
		v = v[:i]
	}
	major, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("postgres --version in %s printed %q: no major version", binDir, out)
	}
	return major, nil
}

func runVersion(postgres string) (string, error) {
	out, err := exec.Command(postgres, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("running %s --version: %w", postgres, err)
	}
	return strings.TrimSpace(string(out)), nil
}
