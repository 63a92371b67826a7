// Package commands owns the command table: for every command the upstream knows, its arity,
// flags, key positions (from COMMAND's key specs, movable keys included) and the class that
// decides how the proxy handles it. It knows nothing of sockets.
//
// A Table is built once at start-up and is read-only afterwards: safe for concurrent use.
package commands
