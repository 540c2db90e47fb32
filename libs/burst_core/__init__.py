"""Shared code for Burst's services: wire schemas, names, bus helpers, settings, logging.

Importing this package imports nothing heavy; import the submodules you need.
"""
