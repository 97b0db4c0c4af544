"""End-to-end jobs behind the CLI verbs: each ties the library layers together."""
