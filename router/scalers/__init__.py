"""Scalers for the pod tier: local runner processes, and Kubernetes Deployments."""
