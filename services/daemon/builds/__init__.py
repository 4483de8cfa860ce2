"""Docker's classic builder (``POST /build``): the context, the Dockerfile, each step as a layer."""
