"""Deployment: container images, docker-compose, Kubernetes manifests, bundles of generated
configuration, and a multi-site test bed on one machine (network namespaces)."""
