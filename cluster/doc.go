// Package cluster owns everything upstream of the proxy: the hash-slot function, the view of the
// cluster's primaries (a slot map kept fresh from CLUSTER SLOTS through a rueidis client), and
// the pipelined connections to each node that carry client commands.
//
// It knows nothing of client connections: callers hand it raw RESP requests and get back raw
// RESP reply bytes, exactly as the owning node sent them.
package cluster
