package proxy

// Fixed wire texts of errors the proxy makes itself (without the leading '-').
const (
	errCrossSlot       = "CROSSSLOT Keys in request don't hash to the same slot"
	errNoProto         = "NOPROTO unsupported protocol version"
	errNotInteger      = "ERR value is not an integer or out of range"
	errSyntax          = "ERR syntax error"
	errDBIndex         = "ERR DB index is out of range"
	errClusterDisabled = "ERR This instance has cluster support disabled"
	errMaxClients      = "ERR max number of clients reached"
	errNoAuthSet       = "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?"
	errWrongPass       = "WRONGPASS invalid username-password pair or user is disabled."
	errClientName      = "ERR Client names cannot contain spaces, newlines or special characters."
	errHelloProto      = "ERR Protocol version is not an integer or out of range"
	errNoSlot          = "CLUSTERDOWN Hash slot not served"
	errLockKeys        = "ERR lock keys are managed by LOCK/UNLOCK"
	errChannelMoved    = "TRYAGAIN the channel's slot moved; the proxy is re-reading the cluster topology"
)

func errDenied(name string) string {
	return "ERR command '" + name + "' is not allowed by the proxy policy"
}

func errNotSupported(name string) string {
	return "ERR command '" + name + "' is not supported by the proxy"
}

func errUpstream(err error) string {
	return "ERR proxy: " + err.Error()
}
