"""A user module that fails while it is imported."""

raise RuntimeError("settings.yaml not found")
