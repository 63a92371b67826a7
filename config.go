package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Duration is a time.Duration written as "10s", "250ms" in YAML.
type Duration time.Duration

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil || v < 0 {
		return fmt.Errorf("line %d: %q is not a duration like 10s or 250ms", n.Line, s)
	}
	*d = Duration(v)
	return nil
}

// Config is the whole configuration; config.example.yaml documents every field.
type Config struct {
	// Listen is the client address, host:port. Non-loopback addresses are refused until client
	// authentication is configured.
	Listen string `yaml:"listen"`
	// EventLoops is how many epoll loops serve ordinary single-slot traffic; 0 serves every
	// client on a goroutine of its own.
	EventLoops int `yaml:"event-loops"`
	Log        struct {
		// Format is json or console.
		Format string `yaml:"format"`
		// Level is debug, info, warn or error.
		Level string `yaml:"level"`
	} `yaml:"log"`
	Upstream struct {
		// Seeds are cluster nodes (or one standalone server) to learn the topology from.
		Seeds []string `yaml:"seeds"`
		// Username and Password authenticate to every node; PasswordFile or PasswordEnv name
		// where to read the password instead.
		Username     string `yaml:"username"`
		Password     string `yaml:"password"`
		PasswordFile string `yaml:"password-file"`
		PasswordEnv  string `yaml:"password-env"`
		// ReadFrom sends read-only commands to primary, replica or prefer-replica.
		ReadFrom string `yaml:"read-from"`
		// TLS for every upstream connection.
		TLS struct {
			Enabled bool `yaml:"enabled"`
			// CAFile verifies the servers (the system roots when empty).
			CAFile string `yaml:"ca-file"`
			// CertFile and KeyFile are a client certificate, for servers that ask for one.
			CertFile string `yaml:"cert-file"`
			KeyFile  string `yaml:"key-file"`
			// ServerName overrides the name checked in the servers' certificates.
			ServerName string `yaml:"server-name"`
			// InsecureSkipVerify turns verification off: for tests only, never the default.
			InsecureSkipVerify bool `yaml:"insecure-skip-verify"`
		} `yaml:"tls"`
		// DialTimeout bounds one connection attempt.
		DialTimeout Duration `yaml:"dial-timeout"`
		// ConnectTimeout is how long start-up keeps trying to reach the seeds.
		ConnectTimeout Duration `yaml:"connect-timeout"`
		// Timeout fails requests that got no reply byte for this long.
		Timeout Duration `yaml:"timeout"`
		// RefreshInterval re-reads the slot map periodically.
		RefreshInterval Duration `yaml:"refresh-interval"`
		// MaxRedirects bounds MOVED/ASK/TRYAGAIN handling per command.
		MaxRedirects int `yaml:"max-redirects"`
		// MaxPinned caps, per node, the connections clients hold for themselves (WATCH,
		// blocking commands, subscriptions).
		MaxPinned int `yaml:"max-pinned"`
	} `yaml:"upstream"`
	Limits struct {
		MaxClients     int  `yaml:"max-clients"`
		MaxArgs        int  `yaml:"max-args"`
		MaxBulk        int  `yaml:"max-bulk"`
		MaxInline      int  `yaml:"max-inline"`
		MaxQueryBuffer int  `yaml:"max-query-buffer"`
		InlineCommands bool `yaml:"inline-commands"`
		MaxBatch       int  `yaml:"max-batch"`
		// SlowClientTimeout disconnects a subscriber that takes no message for this long.
		SlowClientTimeout Duration `yaml:"slow-client-timeout"`
	} `yaml:"limits"`
	Policy struct {
		Allow []string `yaml:"allow"`
		Deny  []string `yaml:"deny"`
	} `yaml:"policy"`
	Auth struct {
		// Password of the default user; with it (or users), clients must AUTH first.
		Password     string `yaml:"password"`
		PasswordFile string `yaml:"password-file"`
		PasswordEnv  string `yaml:"password-env"`
		// Users are named users with their own passwords.
		Users []struct {
			Name         string `yaml:"name"`
			Password     string `yaml:"password"`
			PasswordFile string `yaml:"password-file"`
			PasswordEnv  string `yaml:"password-env"`
		} `yaml:"users"`
	} `yaml:"auth"`
	Locks struct {
		// KeyPrefix starts every lock key and fence key; it may not contain braces.
		KeyPrefix string `yaml:"key-prefix"`
		// DefaultTTL applies when LOCK, RENEW or SAFESET name none.
		DefaultTTL Duration `yaml:"default-ttl"`
		// MaxTTL and MaxWait bound what a client may ask for.
		MaxTTL  Duration `yaml:"max-ttl"`
		MaxWait Duration `yaml:"max-wait"`
		// Replicas that must acknowledge an acquisition: auto (1 when the shard has a replica,
		// else 0) or a number.
		Replicas string `yaml:"replicas"`
		// ReplicaTimeout bounds the WAIT for those acknowledgements.
		ReplicaTimeout Duration `yaml:"replica-timeout"`
		// ProtectKeys refuses pass-through writes to lock and fence keys.
		ProtectKeys bool `yaml:"protect-keys"`
		// RecheckInterval bounds a waiter's sleep without news of a release.
		RecheckInterval Duration `yaml:"recheck-interval"`
		// Handoff lets an UNLOCK hand the lock straight to this proxy's next waiter.
		Handoff bool `yaml:"handoff"`
		// TokenCache is how many resources per connection remember their latest token.
		TokenCache int `yaml:"token-cache"`
	} `yaml:"locks"`
	Shutdown struct {
		DrainTimeout Duration `yaml:"drain-timeout"`
	} `yaml:"shutdown"`
	Debug struct {
		// PprofListen serves net/http/pprof on this loopback address when set.
		PprofListen string `yaml:"pprof-listen"`
	} `yaml:"debug"`
}

func defaultConfig() Config {
	var c Config
	c.Listen = "127.0.0.1:6380"
	c.EventLoops = 1
	c.Log.Format = "json"
	c.Log.Level = "info"
	c.Upstream.Seeds = []string{"127.0.0.1:6379"}
	c.Upstream.DialTimeout = Duration(5 * time.Second)
	c.Upstream.ConnectTimeout = Duration(30 * time.Second)
	c.Upstream.Timeout = Duration(10 * time.Second)
	c.Upstream.RefreshInterval = Duration(10 * time.Second)
	c.Upstream.MaxRedirects = 5
	c.Upstream.MaxPinned = 1000
	c.Upstream.ReadFrom = "primary"
	c.Limits.MaxClients = 10000
	c.Limits.MaxArgs = 1 << 20
	c.Limits.MaxBulk = 512 << 20
	c.Limits.MaxInline = 64 << 10
	c.Limits.MaxQueryBuffer = 1 << 30
	c.Limits.InlineCommands = true
	c.Limits.MaxBatch = 256
	c.Limits.SlowClientTimeout = Duration(10 * time.Second)
	c.Locks.KeyPrefix = "lock:"
	c.Locks.DefaultTTL = Duration(10 * time.Second)
	c.Locks.MaxTTL = Duration(24 * time.Hour)
	c.Locks.MaxWait = Duration(5 * time.Minute)
	c.Locks.Replicas = "auto"
	c.Locks.ReplicaTimeout = Duration(200 * time.Millisecond)
	c.Locks.ProtectKeys = true
	c.Locks.Handoff = true
	c.Locks.RecheckInterval = Duration(time.Second)
	c.Locks.TokenCache = 1024
	c.Shutdown.DrainTimeout = Duration(10 * time.Second)
	return c
}

// loadConfig reads path over the defaults; unknown keys are errors.
func loadConfig(path string) (Config, error) {
	c := defaultConfig()
	if path == "" {
		return c, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return c, err
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return c, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// validate checks every value and names the key at fault.
func (c *Config) validate() error {
	host, port, err := net.SplitHostPort(c.Listen)
	if err != nil || port == "" {
		return fmt.Errorf("listen: %q is not host:port", c.Listen)
	}
	if !isLoopback(host) && !c.authConfigured() {
		return fmt.Errorf("listen: %q is not a loopback address; listening elsewhere requires auth.password or auth.users", c.Listen)
	}
	switch c.Log.Format {
	case "json", "console":
	default:
		return fmt.Errorf("log.format: %q is not json or console", c.Log.Format)
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("log.level: %q is not debug, info, warn or error", c.Log.Level)
	}
	if len(c.Upstream.Seeds) == 0 {
		return errors.New("upstream.seeds: at least one host:port is needed")
	}
	for _, s := range c.Upstream.Seeds {
		if _, p, err := net.SplitHostPort(s); err != nil || p == "" {
			return fmt.Errorf("upstream.seeds: %q is not host:port", s)
		}
	}
	if countSet(c.Upstream.Password, c.Upstream.PasswordFile, c.Upstream.PasswordEnv) > 1 {
		return errors.New("upstream.password, upstream.password-file and upstream.password-env are exclusive")
	}
	if countSet(c.Auth.Password, c.Auth.PasswordFile, c.Auth.PasswordEnv) > 1 {
		return errors.New("auth.password, auth.password-file and auth.password-env are exclusive")
	}
	for i, u := range c.Auth.Users {
		if u.Name == "" || strings.ContainsAny(u.Name, " \t\r\n") {
			return fmt.Errorf("auth.users[%d].name: %q is not a user name", i, u.Name)
		}
		if countSet(u.Password, u.PasswordFile, u.PasswordEnv) != 1 {
			return fmt.Errorf("auth.users[%d]: exactly one of password, password-file and password-env", i)
		}
	}
	switch c.Upstream.ReadFrom {
	case "primary", "replica", "prefer-replica":
	default:
		return fmt.Errorf("upstream.read-from: %q is not primary, replica or prefer-replica", c.Upstream.ReadFrom)
	}
	if (c.Upstream.TLS.CertFile == "") != (c.Upstream.TLS.KeyFile == "") {
		return errors.New("upstream.tls.cert-file and upstream.tls.key-file go together")
	}
	positive := []struct {
		key string
		v   int64
	}{
		{"upstream.dial-timeout", int64(c.Upstream.DialTimeout)},
		{"upstream.connect-timeout", int64(c.Upstream.ConnectTimeout)},
		{"upstream.timeout", int64(c.Upstream.Timeout)},
		{"upstream.max-redirects", int64(c.Upstream.MaxRedirects)},
		{"upstream.max-pinned", int64(c.Upstream.MaxPinned)},
		{"limits.max-clients", int64(c.Limits.MaxClients)},
		{"limits.max-args", int64(c.Limits.MaxArgs)},
		{"limits.max-bulk", int64(c.Limits.MaxBulk)},
		{"limits.max-inline", int64(c.Limits.MaxInline)},
		{"limits.max-query-buffer", int64(c.Limits.MaxQueryBuffer)},
		{"limits.max-batch", int64(c.Limits.MaxBatch)},
		{"limits.slow-client-timeout", int64(c.Limits.SlowClientTimeout)},
		{"locks.default-ttl", int64(c.Locks.DefaultTTL)},
		{"locks.max-ttl", int64(c.Locks.MaxTTL)},
		{"locks.max-wait", int64(c.Locks.MaxWait)},
		{"locks.replica-timeout", int64(c.Locks.ReplicaTimeout)},
		{"locks.recheck-interval", int64(c.Locks.RecheckInterval)},
		{"locks.token-cache", int64(c.Locks.TokenCache)},
	}
	for _, p := range positive {
		if p.v <= 0 {
			return fmt.Errorf("%s: must be greater than zero", p.key)
		}
	}
	if c.EventLoops < 0 || c.EventLoops > 64 {
		return errors.New("event-loops: from 0 to 64")
	}
	if c.Limits.MaxArgs > 1<<31-1 {
		return errors.New("limits.max-args: at most 2147483647")
	}
	if c.Limits.MaxBulk > 1<<31-1 {
		return errors.New("limits.max-bulk: at most 2147483647")
	}
	if c.Limits.MaxQueryBuffer < c.Limits.MaxInline {
		return errors.New("limits.max-query-buffer: must be at least limits.max-inline")
	}
	if c.Locks.KeyPrefix == "" || strings.ContainsAny(c.Locks.KeyPrefix, "{}") {
		return fmt.Errorf("locks.key-prefix: %q must be non-empty and have no braces", c.Locks.KeyPrefix)
	}
	if c.Locks.DefaultTTL > c.Locks.MaxTTL {
		return errors.New("locks.default-ttl: must not exceed locks.max-ttl")
	}
	if _, err := c.lockReplicas(); err != nil {
		return err
	}
	if c.Debug.PprofListen != "" {
		h, _, err := net.SplitHostPort(c.Debug.PprofListen)
		if err != nil || !isLoopback(h) {
			return fmt.Errorf("debug.pprof-listen: %q is not a loopback host:port", c.Debug.PprofListen)
		}
	}
	for _, n := range append(append([]string{}, c.Policy.Allow...), c.Policy.Deny...) {
		if n == "" || strings.ContainsAny(n, " \t\r\n") {
			return fmt.Errorf("policy: %q is not a command name", n)
		}
	}
	return nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// lockReplicas turns locks.replicas into a count, -1 for auto.
func (c *Config) lockReplicas() (int, error) {
	if c.Locks.Replicas == "auto" {
		return -1, nil
	}
	n, err := strconv.Atoi(c.Locks.Replicas)
	if err != nil || n < 0 || n > 16 {
		return 0, fmt.Errorf("locks.replicas: %q is not auto or a number from 0 to 16", c.Locks.Replicas)
	}
	return n, nil
}

func countSet(vals ...string) int {
	n := 0
	for _, v := range vals {
		if v != "" {
			n++
		}
	}
	return n
}

func (c *Config) authConfigured() bool {
	return c.Auth.Password != "" || c.Auth.PasswordFile != "" || c.Auth.PasswordEnv != "" || len(c.Auth.Users) > 0
}

// secret returns a password given inline, in a file or in an environment variable.
func secret(key, inline, file, env string) (string, error) {
	switch {
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("%s-file: %w", key, err)
		}
		return strings.TrimRight(string(b), "\r\n"), nil
	case env != "":
		v, ok := os.LookupEnv(env)
		if !ok || v == "" {
			return "", fmt.Errorf("%s-env: environment variable %s is not set", key, env)
		}
		return v, nil
	}
	return inline, nil
}

// upstreamTLS builds the upstream TLS configuration: verified by default.
func (c *Config) upstreamTLS() (*tls.Config, error) {
	t := c.Upstream.TLS
	if !t.Enabled {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName, InsecureSkipVerify: t.InsecureSkipVerify}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("upstream.tls.ca-file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("upstream.tls.ca-file: no certificate in %s", t.CAFile)
		}
		cfg.RootCAs = pool
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("upstream.tls.cert-file: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}
