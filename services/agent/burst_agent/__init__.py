"""Burst agent service."""
