from __future__ import annotations

import dataclasses

from burst_core.settings import CommonSettings


@dataclasses.dataclass
class SchedulerSettings(CommonSettings):
    #: Seconds between reconcile passes (repairs drift; scale-up itself reacts to signals).
    reconcile_interval: float = 2.0
    #: Seconds between scale-down checks of idle containers.
    scaledown_tick: float = 0.2
    #: An agent whose last heartbeat is older than this is considered lost.
    heartbeat_timeout: float = 10.0
    #: CPU and memory overcommit factor applied to agents' capacity.
    overcommit: float = 1.0
