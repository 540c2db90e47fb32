from __future__ import annotations

import dataclasses

from burst_core.settings import CommonSettings


@dataclasses.dataclass
class SchedulerSettings(CommonSettings):
    #: Seconds between reconcile passes (repairs drift; scale-up itself reacts to signals).
    reconcile_interval: float = 2.0
    #: Seconds between scale-down checks of idle containers.
    scaledown_tick: float = 0.2
    #: An agent whose last heartbeat is older than this is marked lost: its allocations
    #: are released and its containers replaced elsewhere.
    heartbeat_timeout: float = 10.0
    #: Seconds between checks for agents past their heartbeat window.
    lost_check_interval: float = 0.5
    #: CPU and memory overcommit factor applied to agents' capacity.
    overcommit: float = 1.0
    #: Seconds a function whose containers no live agent could ever hold (``gpu="H200:2"``
    #: where the largest agent has one) keeps its calls waiting (an agent that can may
    #: join) before they fail with an error naming the largest agent; 0: they wait.
    unsatisfiable_timeout: float = 300.0
    #: Containers of a function that keep failing to start (a platform fault: a bundle that
    #: cannot be fetched, a runtime error) or dying with no input running are placed again
    #: after a growing delay: from this many seconds, doubling per failure, up to the max.
    #: (One that dies with inputs running fails them: their retries pace them.)
    start_backoff_initial: float = 1.0
    start_backoff_max: float = 60.0
    #: The container placed after this many failed starts in a row (counting itself)
    #: answers the function's waiting calls with its start error if it fails too, as the
    #: user's own start errors do: a transient fault is retried, a lasting one is not
    #: waited on for minutes.
    start_failures_to_fail_calls: int = 3
    #: A stop order the agent has neither acted on nor refused (the container is still
    #: idle since the same moment) is sent again after this many seconds.
    stop_order_retry: float = 10.0
    #: Agents tried per placement before giving up (each lost compare-and-set re-picks).
    claim_attempts: int = 8
    #: ``input.accepted`` signals decided at once (decisions on one function never overlap).
    signal_concurrency: int = 16
    #: Seconds before an unacknowledged signal is redelivered.
    signal_ack_wait: float = 10.0
    #: Seconds the leader lease lasts without renewal (renewed every third of it): a
    #: killed leader is replaced within about this plus a third.
    lease_ttl: float = 3.0
    #: Seconds to wait before restarting a failed KV watch or Redis write.
    retry_delay: float = 0.5
    #: A ``burst shell`` session's container that finds no room is tried again every
    #: ``shell_place_retry`` seconds (idle containers of other functions may yield), for
    #: up to ``shell_place_timeout`` seconds after the session was asked for (as long as
    #: the gateway holds the request by default, its ``BURST_WEB_STARTUP_TIMEOUT``).
    shell_place_retry: float = 1.0
    shell_place_timeout: float = 120.0
    #: Seconds between checks for due schedule ticks (a tick fires at most this late).
    schedule_interval: float = 0.5
    #: A tick that came due at most this many seconds ago still fires (late); older ones
    #: were missed while the cluster was down and fire only on a backfill.
    schedule_catchup: float = 60.0
    #: Most missed ticks one backfill fires per function.
    schedule_backfill_max: int = 1000
    #: A tick's call record younger than this is republished when found (its creator may
    #: have died before publishing); keep it below the inputs stream's dedupe window.
    schedule_dedupe_window: float = 60.0
    #: An ephemeral app (``burst run``, ``with app.run():``), and an ephemeral Dict or Queue,
    #: is stopped once its client's heartbeats have been missing this many seconds (counted
    #: only while the store took the scheduler's writes).
    client_timeout: float = 10.0
    #: Seconds between the client reaper's passes.
    client_reap_interval: float = 0.5
    #: Seconds the scheduler waits for an agent to say whether a traced call waits for
    #: one of its starting containers (traced calls only; no answer: not in its trace).
    trace_attach_timeout: float = 2.0

    def __post_init__(self) -> None:
        if not self.trace_attach_timeout > 0:
            raise ValueError(f"setting BURST_TRACE_ATTACH_TIMEOUT={self.trace_attach_timeout!r}"
                             " must be a number of seconds above 0")
        super().__post_init__()
        if self.start_failures_to_fail_calls < 1:
            raise ValueError(f"setting BURST_START_FAILURES_TO_FAIL_CALLS="
                             f"{self.start_failures_to_fail_calls} must be at least 1 (1: the "
                             f"first failed start fails the waiting calls)")
        for name in ("shell_place_retry", "shell_place_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"setting BURST_{name.upper()}={getattr(self, name)} must "
                                 "be a positive number of seconds")
