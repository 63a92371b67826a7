// Command valkey-lock-proxy is a RESP sidecar that presents a Valkey Cluster as one standalone
// server and adds distributed-lock commands.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/redis/rueidis"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/valkey-lock-proxy/valkey-lock-proxy/cluster"
	"github.com/valkey-lock-proxy/valkey-lock-proxy/commands"
	"github.com/valkey-lock-proxy/valkey-lock-proxy/proxy"
	"github.com/valkey-lock-proxy/valkey-lock-proxy/proxy/resp"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "valkey-lock-proxy:", err)
		os.Exit(1)
	}
}

// run parses the command line, starts the proxy and serves until SIGINT or SIGTERM.
func run(ctx context.Context, argv []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("valkey-lock-proxy", flag.ContinueOnError)
	configPath := fs.String("config", "", "path of the YAML configuration file")
	listen := fs.String("listen", "", "client address host:port (default 127.0.0.1:6380)")
	upstream := fs.String("upstream", "", "seed nodes host:port[,host:port...]")
	showVersion := fs.Bool("version", false, "print the version and exit")
	logFormat := fs.String("log-format", "", "json or console")
	logLevel := fs.String("log-level", "", "debug, info, warn or error")
	pprofListen := fs.String("pprof", "", "serve net/http/pprof on this loopback host:port")
	if err := fs.Parse(argv); err != nil {
		return err
	}
	if *showVersion {
		fmt.Fprintln(stdout, "valkey-lock-proxy", version)
		return nil
	}
	cfg, err := loadConfig(*configPath)
	if err != nil {
		return err
	}
	applyOverrides(&cfg, os.Getenv("LOCKPROXY_LISTEN"), os.Getenv("LOCKPROXY_UPSTREAM"))
	applyOverrides(&cfg, *listen, *upstream)
	if *logFormat != "" {
		cfg.Log.Format = *logFormat
	}
	if *logLevel != "" {
		cfg.Log.Level = *logLevel
	}
	if *pprofListen != "" {
		cfg.Debug.PprofListen = *pprofListen
	}
	if err := cfg.validate(); err != nil {
		return err
	}
	log, err := newLogger(cfg.Log.Format, cfg.Log.Level)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	password, err := secret("upstream.password", cfg.Upstream.Password, cfg.Upstream.PasswordFile, cfg.Upstream.PasswordEnv)
	if err != nil {
		return err
	}
	tlsCfg, err := cfg.upstreamTLS()
	if err != nil {
		return err
	}
	if tlsCfg != nil && tlsCfg.InsecureSkipVerify {
		log.Warn("upstream.tls.insecure-skip-verify is on: the servers' certificates are not checked")
	}
	auth, err := buildAuth(&cfg)
	if err != nil {
		return err
	}
	pool, err := connect(ctx, log, cluster.Options{
		Seeds:           cfg.Upstream.Seeds,
		Username:        cfg.Upstream.Username,
		Password:        password,
		TLS:             tlsCfg,
		ReadFrom:        cfg.Upstream.ReadFrom,
		DialTimeout:     time.Duration(cfg.Upstream.DialTimeout),
		Timeout:         time.Duration(cfg.Upstream.Timeout),
		RefreshInterval: time.Duration(cfg.Upstream.RefreshInterval),
		MaxRedirects:    cfg.Upstream.MaxRedirects,
		MaxPinned:       cfg.Upstream.MaxPinned,
		WaitTimeout:     time.Duration(cfg.Locks.ReplicaTimeout),
		Logger:          log,
	}, time.Duration(cfg.Upstream.ConnectTimeout))
	if err != nil {
		return err
	}
	defer pool.Close()

	table, upVersion, err := loadTable(ctx, pool, commands.Policy{Allow: cfg.Policy.Allow, Deny: cfg.Policy.Deny})
	if err != nil {
		return err
	}
	replicas, _ := cfg.lockReplicas()
	srv := proxy.NewServer(proxy.Options{
		Limits: resp.Limits{
			MaxArgs:   cfg.Limits.MaxArgs,
			MaxBulk:   cfg.Limits.MaxBulk,
			MaxInline: cfg.Limits.MaxInline,
			MaxQuery:  cfg.Limits.MaxQueryBuffer,
			Inline:    cfg.Limits.InlineCommands,
		},
		MaxClients:        cfg.Limits.MaxClients,
		MaxBatch:          cfg.Limits.MaxBatch,
		EventLoops:        cfg.EventLoops,
		SlowClientTimeout: time.Duration(cfg.Limits.SlowClientTimeout),
		Auth:              auth,
		Version:           version,
		Logger:            log,
		Locks: proxy.LockOptions{
			LockLimits: commands.LockLimits{
				DefaultTTL: time.Duration(cfg.Locks.DefaultTTL),
				MaxTTL:     time.Duration(cfg.Locks.MaxTTL),
				MaxWait:    time.Duration(cfg.Locks.MaxWait),
			},
			KeyPrefix:      cfg.Locks.KeyPrefix,
			Replicas:       replicas,
			ReplicaTimeout: time.Duration(cfg.Locks.ReplicaTimeout),
			ProtectKeys:    cfg.Locks.ProtectKeys,
			Recheck:        time.Duration(cfg.Locks.RecheckInterval),
			Handoff:        cfg.Locks.Handoff,
			TokenCache:     cfg.Locks.TokenCache,
		},
	}, pool, table, upVersion)

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return err
	}
	mode := "cluster"
	if pool.Standalone() {
		mode = "standalone"
	}
	log.Info("listening", zap.String("addr", ln.Addr().String()), zap.String("upstream_mode", mode),
		zap.Int("primaries", len(pool.Primaries())), zap.String("version", version))
	if cfg.Debug.PprofListen != "" {
		stopPprof, err := servePprof(cfg.Debug.PprofListen, log)
		if err != nil {
			return err
		}
		defer stopPprof()
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down: draining clients")
	drainCtx, cancel := context.WithTimeout(context.Background(), time.Duration(cfg.Shutdown.DrainTimeout))
	defer cancel()
	if err := srv.Shutdown(drainCtx); err != nil {
		log.Warn("drain timed out; closed the remaining clients", zap.Error(err))
	}
	<-served
	log.Info("stopped")
	return nil
}

func applyOverrides(cfg *Config, listen, upstream string) {
	if listen != "" {
		cfg.Listen = listen
	}
	if upstream != "" {
		cfg.Upstream.Seeds = strings.Split(upstream, ",")
	}
}

func newLogger(format, level string) (*zap.Logger, error) {
	var zc zap.Config
	if format == "console" {
		zc = zap.NewDevelopmentConfig()
	} else {
		zc = zap.NewProductionConfig()
	}
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, err
	}
	zc.Level = zap.NewAtomicLevelAt(lvl)
	zc.OutputPaths = []string{"stderr"}
	return zc.Build()
}

// connect keeps trying to reach the upstream until it answers or timeout passes: a sidecar
// often starts before the servers it fronts.
func connect(ctx context.Context, log *zap.Logger, opts cluster.Options, timeout time.Duration) (*cluster.Pool, error) {
	deadline := time.Now().Add(timeout)
	delay := 100 * time.Millisecond
	for {
		attempt, cancel := context.WithTimeout(ctx, opts.DialTimeout+opts.Timeout)
		pool, err := cluster.New(attempt, opts)
		cancel()
		if err == nil {
			return pool, nil
		}
		if ctx.Err() != nil || time.Now().Add(delay).After(deadline) {
			return nil, fmt.Errorf("upstream %s: %w", strings.Join(opts.Seeds, ","), err)
		}
		log.Warn("upstream not reachable yet; retrying", zap.Error(err), zap.Duration("in", delay))
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, 2*time.Second)
	}
}

// loadTable reads COMMAND and the server version from the upstream.
func loadTable(ctx context.Context, pool *cluster.Pool, pol commands.Policy) (*commands.Table, string, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	reply, err := pool.Control(cctx, func(c rueidis.Client) rueidis.Completed { return c.B().Command().Build() }).ToArray()
	if err != nil {
		return nil, "", fmt.Errorf("COMMAND: %w", err)
	}
	table, err := commands.Load(reply, pol)
	if err != nil {
		return nil, "", err
	}
	info, err := pool.Control(cctx, func(c rueidis.Client) rueidis.Completed { return c.B().Info().Section("server").Build() }).ToString()
	if err != nil {
		return nil, "", fmt.Errorf("INFO server: %w", err)
	}
	upVersion := "unknown"
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "valkey_version:"); ok {
			upVersion = v
			break
		}
		if v, ok := strings.CutPrefix(line, "redis_version:"); ok {
			upVersion = v
		}
	}
	return table, upVersion, nil
}

// servePprof serves the runtime profiles on a loopback address until the returned stop is called.
func servePprof(addr string, log *zap.Logger) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("debug.pprof-listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("pprof server", zap.Error(err))
		}
	}()
	log.Info("pprof listening", zap.String("addr", ln.Addr().String()))
	return func() {
		_ = hs.Close()
		<-done
	}, nil
}

// buildAuth reads the client passwords; nil when none is configured.
func buildAuth(cfg *Config) (*proxy.Auth, error) {
	def, err := secret("auth.password", cfg.Auth.Password, cfg.Auth.PasswordFile, cfg.Auth.PasswordEnv)
	if err != nil {
		return nil, err
	}
	users := map[string]string{}
	for i, u := range cfg.Auth.Users {
		pw, err := secret(fmt.Sprintf("auth.users[%d].password", i), u.Password, u.PasswordFile, u.PasswordEnv)
		if err != nil {
			return nil, err
		}
		users[u.Name] = pw
	}
	return proxy.NewAuth(def, users), nil
}
