"""Compression and deployment: variants of a bundle's model on other runtimes and precisions."""
