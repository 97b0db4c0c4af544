"""Serving bundles over HTTP: `vitkit serve BUNDLE|CONFIG` (extra ``vitkit[serve]``)."""
