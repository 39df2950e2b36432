"""Core utilities: seeding, logging, versions and session information."""
