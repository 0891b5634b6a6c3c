"""Utilities: safe I/O."""
