"""Placeholder application package for the webapp example."""
