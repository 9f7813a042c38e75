"""Dramatiq broker setup, actors and maintenance (filled in by the jobs work)."""
