from __future__ import annotations

import dataclasses

from burst_agent.runtimes.network import DEFAULT_DENY_CIDRS
from burst_agent.runtimes.sandbox import DEFAULT_PIDS_LIMIT
from burst_core.settings import CommonSettings


@dataclasses.dataclass
class AgentSettings(CommonSettings):
    #: Stable id of this agent (defaults to the instance id).
    agent_id: str = ""
    #: CPU cores and memory (MiB) offered to containers; 0 means "what the machine has".
    cpu: float = 0.0
    memory_mb: int = 0
    #: Declared GPU inventory for machines without NVML, e.g. "H100:8" or "A100-80GB:2,T4:1".
    #: Empty means: discover with NVML (none when NVML is absent).
    gpus: str = ""
    #: Whether this agent's capacity is spot (preemptible).
    spot: bool = False
    #: Container runtime: "process" (a subprocess per container).
    runtime: str = "process"
    #: Create Burst's streams and buckets if missing (off for an agent that joined another
    #: machine's cluster: the agent role may not; it waits for them instead).
    ensure_topology: bool = True
    #: Seconds an agent that does not create the topology waits for it.
    topology_wait: float = 60.0
    #: Leave the cluster (exit) once drained by `burst agent drain`.
    leave_when_drained: bool = True
    #: Seconds `burst agent drain` lets the inputs running here finish (the drain's own
    #: ``--timeout`` overrides it); what still runs then is interrupted and handed back.
    drain_timeout: float = 300.0
    #: Seconds between heartbeats (carry container states to the scheduler).
    heartbeat_interval: float = 1.0
    #: Seconds between metering records of each running container.
    metering_interval: float = 5.0
    #: Seconds a container gets to run @exit after SIGTERM before SIGKILL.
    stop_grace: float = 5.0
    #: AckWait of inputs; running inputs send in-progress acks every third of it.
    ack_wait: float = 30.0
    #: Seconds a pull request for inputs lingers at the server before it expires and is
    #: renewed; one never answered is presumed lost after twice this.
    fetch_timeout: float = 0.5
    #: Seconds an input delivered while no container of its function here has a free
    #: slot (one stopped while its slots were requested) waits for one before it is
    #: handed back (its redelivery then counts as an internal retry).
    input_hold: float = 0.25
    #: Inputs a container may hold beyond its ``max_inputs``, waiting in line in the
    #: container, so it starts its next input without a round trip through the agent and
    #: NATS. Only for functions whose inputs run in order one at a time (a plain function
    #: with ``max_inputs`` 1, not async, not batched: the shim says so) and, on this
    #: agent, recently took under ``prefetch_max_run`` seconds each on average; an input
    #: waits at most that many others. 0 (the default): none, an input only goes to a free
    #: slot. Opt-in: an input in line waits behind a long one that follows short ones,
    #: where without it another container would start for it (as Modal does).
    input_prefetch: int = 0
    prefetch_max_run: float = 0.02
    #: Seconds before pulling again after a pull failed (consumer deleted, NATS down).
    pull_retry: float = 0.2
    #: Seconds an answered input's ack waits, gathered with others (one write; and while
    #: calls keep coming the inputs stream's last block never empties, which otherwise
    #: costs nats-server a new block file per call). Its output is stored before: an ack
    #: lost with the agent only means a redelivery that finds the output and acks.
    ack_delay: float = 0.02
    #: Seconds a stopping container waits for the server to confirm the acks of the
    #: inputs it answered, before its stop is announced (a stop wakes the scheduler's
    #: backlog check, which must not count answered inputs as waiting: it would place a
    #: container, holding a GPU for the whole scaledown window, for work that is done).
    stop_ack_timeout: float = 2.0
    #: Seconds between the shim's liveness frames, and how long without one makes a
    #: container unresponsive (frozen, wedged): its inputs then go to another container.
    container_heartbeat_interval: float = 1.0
    container_heartbeat_timeout: float = 15.0
    #: Seconds after which an unresponsive container that never came back is killed.
    unresponsive_kill_after: float = 60.0
    #: Seconds a gateway may take to answer for a starting container's secret values.
    secrets_fetch_timeout: float = 10.0
    #: Bytes of volume file contents this agent keeps cached (by content hash; the least
    #: recently used are evicted past it).
    volume_cache_bytes: int = 20 << 30
    #: Calls from containers: the longest one request of the SDK waits for a result
    #: before answering "pending" (the SDK then asks again), and the interval of their
    #: ``input.accepted`` signals per function (as the gateway's settings).
    call_max_wait: float = 60.0
    call_signal_interval: float = 0.05
    #: Seconds the agent waits, once a container's process is gone, to read the rest of
    #: what it sent (outputs written just before it died are its inputs' answers).
    shim_drain: float = 2.0
    #: Seconds a container may take from start to ready (import + @enter).
    startup_timeout: float = 120.0
    #: Inputs answered with the error when a container fails to start (import error, ...).
    startup_failure_batch: int = 100
    #: Python interpreter used for containers (the process runtime); default: the agent's.
    python: str = ""
    #: Sandbox of the process runtime: "auto" (bubblewrap where it works, else a warning
    #: and plain processes), "on" (refuse to start without it) or "off".
    sandbox: str = "auto"
    #: Host uid (and gid) sandboxed containers run as; never root.
    sandbox_uid: int = 65534
    #: Cores a sandboxed container may use above its ``cpu`` request while the machine has
    #: them to spare: its CFS quota is request + headroom (unless the function sets a
    #: limit), and the request itself is what ``cpu.shares`` guarantees under contention.
    cpu_headroom: float = 1.0
    #: Tasks (processes plus threads) one container may have at once, on both runtimes:
    #: a fork or thread start past it fails inside that container (``EAGAIN``), so a fork
    #: bomb cannot exhaust the machine's pids. The process runtime puts each sandboxed
    #: container in a cgroup v1 ``pids`` cgroup of its own (none without the sandbox: a
    #: warning says so); the Docker runtime passes it as the container's ``pids_limit``.
    #: At least 16 (the shim's own threads count).
    container_pids_limit: int = DEFAULT_PIDS_LIMIT
    #: Start sandboxed containers as forks of a warm interpreter (the zygote) rather than
    #: fresh interpreters (needs root and the sandbox; otherwise fresh interpreters).
    zygote: bool = True
    #: Modules the zygote imports before it forks containers (comma-separated, e.g.
    #: "torch"), besides what the functions' images declare with ``Image.imports()``: a
    #: GPU function's first call then pays CUDA's start only. CUDA itself is initialised
    #: only in the container; a zygote whose imports initialise it is not used.
    zygote_imports: str = ""
    #: Also fork unsandboxed containers (no bubblewrap, e.g. a GPU machine without it) from
    #: a zygote: same uid and environment as a fresh interpreter, its imports done.
    zygote_unsandboxed: bool = False
    #: With the zygote, keep one sandbox made ahead for the next container (a spare), so
    #: bwrap's setup is not on its start; the next spare is made this many seconds after
    #: one is taken (not while the container that took it is still starting).
    spare_sandbox: bool = True
    spare_delay: float = 0.05
    #: Disk (MiB) the process runtime's image root filesystems (``rootfs.py``: bases and
    #: build layers) may use on this machine; past it, the least recently used that no
    #: running container uses are removed.
    image_disk_budget_mb: int = 20_000
    #: Seconds one image build step (an apt install, a command, a debootstrap) may take.
    image_step_timeout: float = 1800.0
    #: Images (root filesystems) whose zygote and spare sandbox stay warm on the process
    #: runtime: the most recently used; others start them again when next needed.
    image_warm_runtimes: int = 4
    #: An image's spare sandbox already runs the image's own python (as the sandbox uid, in
    #: a cgroup of its own, the shim and ``Image.imports()`` imported), so a container
    #: taking it only sends its environment: ``on`` or ``off`` (a spare sandbox only, the
    #: image's python started by each container).
    image_spare_python: str = "on"
    #: Seconds an image's spare python may take to import and say ready.
    image_spare_timeout: float = 120.0
    #: Memory (MiB) an image's spare python may use before a container takes it (its
    #: container's limit replaces it then).
    image_spare_memory_mb: int = 1024
    #: Seconds between two checks of the image store's disk budget
    #: (``BURST_IMAGE_DISK_BUDGET_MB``), made after container starts.
    image_evict_interval: float = 10.0
    #: An image's containers with GPUs get spares too, one per GPU set (made after the
    #: set's first use): at most this many sets per image (0: none), the least recently
    #: used giving way; a set's spare is closed after ``image_gpu_spare_idle`` seconds
    #: without a container of that set.
    image_gpu_spares: int = 2
    image_gpu_spare_idle: float = 600.0
    #: Containers' network on the process runtime: "auto" (user-mode NAT with the deny
    #: rules below where slirp4netns is installed and the agent is root, else none and one
    #: warning), "on" (refuse to start without it) or "off" (no network at all, as with
    #: ``block_network=True`` on every function).
    container_network: str = "auto"
    #: Containers' network (both runtimes): they reach the internet, but never these
    #: networks (comma-separated CIDRs or addresses; RFC 1918 by default), on top of what
    #: is always denied (the host's loopback and own addresses, 169.254.0.0/16, the
    #: cluster's servers). ``allow_cidrs`` opens parts of ``deny_cidrs`` again (an
    #: internal service a workload needs).
    deny_cidrs: str = DEFAULT_DENY_CIDRS
    allow_cidrs: str = ""
    #: Under compose (the Docker runtime, the rules loaded by the netrules service): the
    #: ``rules.json`` it writes; the agent gives containers their network only while that
    #: file is from this boot and under ``netrules_max_age`` seconds old. The service
    #: reloads the rules and writes it every ``netrules_interval`` seconds.
    netrules_file: str = ""
    netrules_interval: float = 10.0
    netrules_max_age: float = 60.0
    #: Seconds the process runtime may take to set up a container's network namespace
    #: (deny rules, then slirp4netns) before the start fails.
    network_setup_timeout: float = 10.0
    #: Seconds between the keepalives the agent sends the gateway for each web request it
    #: holds (the gateway answers 502 when they stop: the agent is lost).
    web_keepalive: float = 1.0
    #: Seconds between offers of the requests waiting here for a slot to the function's
    #: other agents: one with a free container (a new one, placed elsewhere) takes them.
    web_move_interval: float = 0.25
    #: Seconds an offer of a waiting request may wait for another agent's answer (no
    #: answer: the request ends 502, as it may have been taken); also how long cancels
    #: that still come here for a moved request are passed on.
    web_move_timeout: float = 10.0
    #: Publish this agent's figures for the gateway's ``/metrics`` (and each container's
    #: CPU and memory use, for ``burst container list``) every ``metrics_interval``
    #: seconds; off: none are kept.
    metrics: bool = True
    metrics_interval: float = 5.0
    #: Seconds between two reads of the GPUs' health from NVML (Xid and uncorrectable ECC
    #: errors: the GPU gets no more placements; memory a finished container left behind:
    #: reported). Only with GPUs NVML found.
    gpu_health_interval: float = 10.0
    #: Longest a ``burst container exec`` command may run before it is killed.
    exec_timeout: float = 3600.0
    #: Seconds a container placed for a ``burst shell`` session, once ready, waits for the
    #: session's input (gone: the session ended or was cancelled first), then stops.
    shell_input_wait: float = 30.0

    def __post_init__(self) -> None:
        if not self.shell_input_wait > 0:
            raise ValueError(f"BURST_SHELL_INPUT_WAIT={self.shell_input_wait}: use a positive "
                             "number of seconds")
        super().__post_init__()
        if self.input_prefetch < 0:
            raise ValueError(f"BURST_INPUT_PREFETCH={self.input_prefetch}: use 0 (none) or more")
        if not self.gpu_health_interval > 0:
            raise ValueError(f"BURST_GPU_HEALTH_INTERVAL={self.gpu_health_interval}: use "
                             "a number of seconds above 0")
        if not self.metrics_interval > 0:
            raise ValueError(f"BURST_METRICS_INTERVAL={self.metrics_interval}: use more "
                             "than 0 seconds")
        if not self.prefetch_max_run >= 0:
            raise ValueError(f"BURST_PREFETCH_MAX_RUN={self.prefetch_max_run}: use 0 (never) "
                             "or more seconds")
        if not 0 < self.netrules_interval < self.netrules_max_age:
            raise ValueError(f"BURST_NETRULES_INTERVAL={self.netrules_interval} and "
                             f"BURST_NETRULES_MAX_AGE={self.netrules_max_age}: use more than 0 "
                             "seconds, the interval below the maximum age")
        for name in ("web_keepalive", "web_move_interval", "web_move_timeout",
                     "stop_ack_timeout"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"BURST_{name.upper()}={value}: use more than 0 seconds")
        if not self.drain_timeout > 0:
            raise ValueError(f"BURST_DRAIN_TIMEOUT={self.drain_timeout}: use more than 0 "
                             "seconds")
