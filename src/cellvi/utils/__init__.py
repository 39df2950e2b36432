"""Core utilities: seeding, logging, versions and session information."""

from .distributed import is_main_process

__all__ = ["is_main_process"]
