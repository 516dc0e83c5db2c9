"""The proxyless-mesh control plane: Istio YAML in, xDS out."""
