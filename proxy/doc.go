// Package proxy owns the client side: the listener, input limits, each client's loop and
// state, reply ordering and encoding, and drain on shutdown. It turns every error into a RESP
// error in one place (errors.go) and leaves command semantics to package commands and upstream
// traffic to package cluster.
package proxy
