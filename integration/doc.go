// Package integration holds the end-to-end tests: they build the real proxy binary, run it in
// front of a real local Valkey Cluster (integration/cluster.sh) and talk to it with real
// clients. It also holds the benchmark tool (integration/cmd/bench).
package integration
