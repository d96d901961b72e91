"""Datasets: manifests, validation, degradation simulation, the demo corpus."""
