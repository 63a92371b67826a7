// Package resp reads client requests off a connection with hard limits on every size a client
// declares or sends, so that no byte sequence can make the proxy panic, spin, recurse or grow
// without bound. It knows nothing of commands.
//
// A Reader is owned by one goroutine. The commands it returns point into its buffer and stay
// valid only until the next call to ReadBatch.
package resp
