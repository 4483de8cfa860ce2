"""Docker's Engine API JSON, both ways: request bodies parsed into the daemon's messages, and the
daemon's messages rendered as Docker's objects. Pure functions (stdlib, services.common and the
generated messages; no HTTP, no service package), shared by the apiserver and the daemon, which
renders ``GET /containers/json`` itself."""
