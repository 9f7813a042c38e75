"""The Storage protocol and its backends (filled in by the files work)."""
