"""Burst scheduler service."""
