"""The lease now lives in :mod:`burst_core.lease` (shared with the scheduler)."""

from burst_core.lease import Lease

__all__ = ["Lease"]
