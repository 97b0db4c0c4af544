"""The compression tests use ``trained_bundles`` and ``fresh_bundle`` from tests/conftest.py."""
