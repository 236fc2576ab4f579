"""Metrics at scale for committed assignments, and the PNG/HTML report."""
