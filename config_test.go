package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// TestExampleConfigIsTheDefault loads config.example.yaml and checks it states exactly the
// built-in defaults, so the documentation cannot drift from the code.
func TestExampleConfigIsTheDefault(t *testing.T) {
	got, err := loadConfig("config.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := got.validate(); err != nil {
		t.Fatal(err)
	}
	want := defaultConfig()
	normalize := func(c *Config) {
		if len(c.Policy.Allow) == 0 {
			c.Policy.Allow = nil
		}
		if len(c.Policy.Deny) == 0 {
			c.Policy.Deny = nil
		}
		if len(c.Auth.Users) == 0 {
			c.Auth.Users = nil
		}
	}
	normalize(&got)
	normalize(&want)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("config.example.yaml differs from the defaults:\n got %+v\nwant %+v", got, want)
	}
}

func TestConfigErrorsNameTheKey(t *testing.T) {
	tests := []struct {
		name, yaml, key string
	}{
		{"unknown key", "upstream:\n  seedz: [a:1]\n", "seedz"},
		{"unknown top-level key", "lissten: 127.0.0.1:1\n", "lissten"},
		{"bad duration", "upstream:\n  timeout: soon\n", "soon"},
		{"non-loopback listen", "listen: 0.0.0.0:6380\n", "listen"},
		{"bad listen", "listen: nowhere\n", "listen"},
		{"bad log format", "log:\n  format: xml\n", "log.format"},
		{"bad log level", "log:\n  level: loud\n", "log.level"},
		{"bad seed", "upstream:\n  seeds: [nohost]\n", "upstream.seeds"},
		{"zero max clients", "limits:\n  max-clients: 0\n", "limits.max-clients"},
		{"negative bulk", "limits:\n  max-bulk: -1\n", "limits.max-bulk"},
		{"huge bulk", "limits:\n  max-bulk: 4294967296\n", "limits.max-bulk"},
		{"both passwords", "upstream:\n  password: a\n  password-file: /x\n", "upstream.password"},
		{"pprof elsewhere", "debug:\n  pprof-listen: 10.0.0.1:6060\n", "debug.pprof-listen"},
		{"bad read-from", "upstream:\n  read-from: nearest\n", "upstream.read-from"},
		{"user without password", "auth:\n  users:\n    - name: app\n", "auth.users[0]"},
		{"two auth passwords", "auth:\n  password: a\n  password-env: X\n", "auth.password"},
		{"cert without key", "upstream:\n  tls:\n    cert-file: /x\n", "upstream.tls.cert-file"},
		{"wrong type", "limits:\n  max-clients: many\n", "many"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "c.yaml")
			if err := os.WriteFile(path, []byte(tt.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			c, err := loadConfig(path)
			if err == nil {
				err = c.validate()
			}
			if err == nil || !strings.Contains(err.Error(), tt.key) {
				t.Fatalf("error %v does not name %q", err, tt.key)
			}
		})
	}
}

func TestOverridesWin(t *testing.T) {
	c := defaultConfig()
	applyOverrides(&c, "127.0.0.1:7000", "127.0.0.1:1,127.0.0.1:2")
	if c.Listen != "127.0.0.1:7000" || len(c.Upstream.Seeds) != 2 {
		t.Fatalf("overrides not applied: %+v", c)
	}
}

func TestVersionFlag(t *testing.T) {
	var out strings.Builder
	if err := run(t.Context(), []string{"--version"}, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "valkey-lock-proxy ") {
		t.Fatalf("--version printed %q", out.String())
	}
}

func TestBadConfigFailsStartUp(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(path, []byte("limits:\n  max-batch: 0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := run(t.Context(), []string{"--config", path}, &strings.Builder{})
	if err == nil || !strings.Contains(err.Error(), "limits.max-batch") {
		t.Fatalf("run = %v, want an error naming limits.max-batch", err)
	}
}
