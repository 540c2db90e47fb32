"""Burst: serverless compute for Python on machines you own."""
