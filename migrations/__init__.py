"""Alembic environment and versions; run them with ``depot migrate``."""
