"""skiff-cri: Kubernetes' Container Runtime Interface (runtime.v1) on ``<run>/cri.sock``.

A client of highlevel's gRPC, as the daemon is: pods and their containers are highlevel tasks in the
``k8s.io`` namespace (the daemon's are in ``moby``), so neither side sees the other's.
"""
