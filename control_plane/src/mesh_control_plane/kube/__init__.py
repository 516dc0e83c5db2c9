"""Talking to a Kubernetes API server: connection (kubeconfig / in-cluster) and
list+watch reflectors, shared by the registry, configuration and identity parts."""
