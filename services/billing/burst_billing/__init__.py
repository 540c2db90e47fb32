"""Burst billing service."""
