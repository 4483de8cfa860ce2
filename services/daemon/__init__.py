"""skiff-daemon: Docker's concepts (containers, names, logs) over the high-level runtime."""
