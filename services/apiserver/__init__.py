"""skiff-apiserver: the Docker Engine API over HTTP on a UNIX socket, translated to the daemon's gRPC."""
