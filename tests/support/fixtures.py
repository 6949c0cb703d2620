"""Fixtures shared across test packages (PostgreSQL, ...) are registered here."""
