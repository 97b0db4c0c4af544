"""The package version, in a leaf module so that any layer can read it without importing
the package facade (``vitkit/__init__.py``), which sits above every layer."""

__version__ = "0.1.0"
