"""The reliability suite's clusters: the e2e suite's `burst up` fixture, per module."""

from tests.e2e.conftest import cluster  # noqa: F401 - the module-scoped default cluster
