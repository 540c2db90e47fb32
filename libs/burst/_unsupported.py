"""Names of Modal's SDK that Burst has not built yet: using one raises an error that names
it, instead of an ``AttributeError`` or a bare ``TypeError``."""

from __future__ import annotations

from burst.exception import InvalidError

#: Top-level names of Modal's SDK not built yet.
NAMES = frozenset({
    "Sandbox", "NetworkFileSystem", "CloudBucketMount", "Proxy", "Tunnel",
    "Mount", "SandboxSnapshot", "forward", "interact",
})


class NotSupportedError(InvalidError):
    """A part of Modal's SDK that Burst does not support yet."""


def refuse(what: str) -> NotSupportedError:
    return NotSupportedError(f"{what} is not supported by Burst yet")


#: Options of Modal's ``App(...)`` and ``@app.function(...)``/``@app.cls(...)`` that Burst
#: has not built yet. Modal's default value (None, empty, False) is accepted: it asks for
#: nothing.
APP_OPTIONS = frozenset({"mounts"})
FUNCTION_OPTIONS = frozenset({
    "env", "network_file_systems", "cloud_bucket_mounts", "mounts",
    "cloud", "region", "enable_memory_snapshot", "proxy", "ephemeral_disk",
    "i6pn", "rdma", "restrict_modal_access", "single_use_containers", "max_inputs",
    "allow_concurrent_inputs", "concurrency_limit", "container_idle_timeout", "keep_warm",
    "serialized", "startup_timeout", "experimental_options",
    "allow_cross_region_volumes"
})


def check_options(where: str, options: dict[str, object], known: frozenset[str],
                  allowed: list[str]) -> None:
    """Refuse options Burst lacks, naming them (never a bare TypeError)."""
    for key, value in options.items():
        if key not in known:
            raise InvalidError(f"{where} got an unknown option {key}=: Burst takes "
                               f"{', '.join(sorted(allowed))}")
        if value not in (None, False) and value != [] and value != {} and value != ():
            raise refuse(f"option {key}= of {where}")
