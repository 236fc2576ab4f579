"""Thin command modules for the CLI (argument parsing + a call into the library)."""
