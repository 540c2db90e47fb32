"""A deployed app's versions (KV ``burst_app_versions``): each deploy of an app is the
next version; the newest ``keep`` are kept, and the source bundles of those forgotten
are dropped unless a kept version or a live deployment of the workspace uses them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec
import nats.js.errors
from nats.js.kv import KeyValue

from burst_core import bus, names
from burst_core.schemas import AppVersion, AppVersionDecoder, DeploymentRecord, encode


async def of_app(kv: KeyValue, workspace: str, app: str) -> list[AppVersion]:
    """The kept versions of ``app``, oldest first."""
    prefix = names.deployment_key(workspace, app)
    out = [AppVersionDecoder.decode(raw) for raw in (await bus.kv_values(kv, prefix)).values()]
    return sorted(out, key=lambda v: v.version)


async def record(kv: KeyValue, dep: DeploymentRecord, keep: int,
                 in_use: Callable[[], set[str]],
                 drop_bundle: Callable[[str], Awaitable[None]]) -> DeploymentRecord:
    """Store ``dep`` as the app's next version (created, so two deploys at once get two
    numbers) and return it with its version; then forget versions past ``keep``."""
    kept = await of_app(kv, dep.workspace, dep.app)
    version = (kept[-1].version if kept else 0) + 1
    while True:
        dep = msgspec.structs.replace(dep, version=version)
        try:
            await kv.create(names.app_version_key(dep.workspace, dep.app, version),
                            encode(AppVersion(version=version, deployment=dep)))
            break
        except nats.js.errors.KeyWrongLastSequenceError:
            version += 1
    kept = await of_app(kv, dep.workspace, dep.app)
    forget, kept = kept[:-keep] if len(kept) > keep else [], kept[-keep:]
    for v in forget:
        await kv.delete(names.app_version_key(dep.workspace, dep.app, v.version))
    if not forget:
        return dep
    # Any kept version of any app of the workspace (apps deployed from one directory share
    # a bundle), and what runs now.
    used = {AppVersionDecoder.decode(raw).deployment.bundle_hash
            for raw in (await bus.kv_values(kv, dep.workspace)).values()}
    used |= in_use() | {dep.bundle_hash}
    for h in {v.deployment.bundle_hash for v in forget} - used:
        await drop_bundle(h)
    return dep
