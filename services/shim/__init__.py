"""skiff-shim: one small synchronous process per container (stdio, log, exit status, reaping)."""
