"""The one factory of container runtimes: the agent's settings name one, this builds it.

Every runtime is listed in :data:`RUNTIMES`; a new one is added here and nowhere else.
"""

from __future__ import annotations

from pathlib import Path

from burst_agent.runtimes.base import Runtime
from burst_agent.runtimes.images import cache_dir
from burst_agent.runtimes.network import Network
from burst_agent.runtimes.process import ProcessRuntime
from burst_agent.runtimes.rootfs import Store, View
from burst_agent.runtimes.sandbox import MIN_MEMORY_MB, Sandbox
from burst_agent.runtimes.venvs import VenvRuntime
from burst_agent.settings import AgentSettings

#: Every runtime an agent can run containers with (``BURST_RUNTIME``).
RUNTIMES = ("process", "docker")


def make_runtime(settings: AgentSettings, agent_id: str) -> Runtime:
    """The runtime ``settings.runtime`` names, for the agent ``agent_id``."""
    s = settings
    home = Path(s.home) / "agent" / agent_id
    if s.runtime == "docker":
        from burst_agent.runtimes.docker import DockerRuntime  # the Docker SDK: only here
        from burst_agent.runtimes.network import (
            NetrulesCheck,
            docker_bridge_network,
            docker_network,
        )

        rt = DockerRuntime(home / "images", uid=s.sandbox_uid, gpu_devices=not s.gpus,
                           pids_limit=s.container_pids_limit)
        if s.netrules_file and s.container_network != "off":
            # Compose: the netrules service loads the rules into the host's iptables; the
            # network is given at each start while its rules.json is fresh.
            if s.container_network not in ("auto", "on"):
                docker_network(rt.client, mode=s.container_network)  # a clear error
            docker_bridge_network(rt.client)
            rt.network_check = NetrulesCheck(Path(s.netrules_file), s.netrules_max_age)
        else:
            rt.network_mode = docker_network(rt.client, mode=s.container_network,
                                             deny_cidrs=s.deny_cidrs,
                                             allow_cidrs=s.allow_cidrs,
                                             servers=[s.nats_url, s.redis_url])
        return rt
    if s.runtime != "process":
        raise ValueError(f"unknown runtime {s.runtime!r}: use one of {', '.join(RUNTIMES)}")
    for name, value in (("BURST_IMAGE_DISK_BUDGET_MB", s.image_disk_budget_mb),
                        ("BURST_IMAGE_STEP_TIMEOUT", s.image_step_timeout),
                        ("BURST_IMAGE_WARM_RUNTIMES", s.image_warm_runtimes),
                        ("BURST_IMAGE_SPARE_TIMEOUT", s.image_spare_timeout),
                        ("BURST_IMAGE_SPARE_MEMORY_MB", s.image_spare_memory_mb),
                        ("BURST_IMAGE_EVICT_INTERVAL", s.image_evict_interval),
                        ("BURST_IMAGE_GPU_SPARE_IDLE", s.image_gpu_spare_idle)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"{name}={value!r} is not valid: use a positive number")
    if s.image_spare_python not in ("on", "off"):
        raise ValueError(f"BURST_IMAGE_SPARE_PYTHON={s.image_spare_python!r} is not valid: "
                         "use on or off")
    if isinstance(s.image_gpu_spares, bool) or s.image_gpu_spares < 0:
        raise ValueError(f"BURST_IMAGE_GPU_SPARES={s.image_gpu_spares!r} is not valid: use a "
                         "whole number of GPU sets >= 0 (0: no spares for GPU containers)")
    if s.image_spare_memory_mb < MIN_MEMORY_MB:
        raise ValueError(f"BURST_IMAGE_SPARE_MEMORY_MB={s.image_spare_memory_mb!r} is not "
                         f"valid: use at least {MIN_MEMORY_MB} (MiB)")
    box = Sandbox.detect(s.sandbox, agent_id, s.home, s.sandbox_uid,
                         cpu_headroom=s.cpu_headroom, pids_limit=s.container_pids_limit)
    state = home / "containers"
    box.network = Network.detect(home, mode=s.container_network, deny_cidrs=s.deny_cidrs,
                                 allow_cidrs=s.allow_cidrs,
                                 servers=[s.nats_url, s.redis_url],
                                 setup_timeout=s.network_setup_timeout,
                                 sandboxed=box.enabled)

    imports = parse_imports(s.zygote_imports)

    def process(python: str, venv: str = "") -> ProcessRuntime:
        # A sandboxed zygote is root outside the sandbox: it imports ahead only from the
        # agent's own python (the operator's packages), never an image's venv.
        return ProcessRuntime(python, box, state, zygote=s.zygote, spares=s.spare_sandbox,
                              spare_delay=s.spare_delay,
                              zygote_imports=imports if not venv or not box.enabled else [],
                              zygote_unsandboxed=s.zygote_unsandboxed, venv=venv)

    def in_venv(python: str) -> ProcessRuntime:
        # (``venvs.py``'s interpreters: ``<venv>/bin/python``)
        return process(python, venv=str(Path(python).parent.parent))

    def in_image(view: View) -> ProcessRuntime:
        return ProcessRuntime(view.python, box, state, zygote=s.zygote, spares=s.spare_sandbox,
                              spare_delay=s.spare_delay, view=view,
                              spare_python=s.image_spare_python == "on",
                              spare_timeout=s.image_spare_timeout,
                              spare_memory_mb=s.image_spare_memory_mb,
                              gpu_spares=s.image_gpu_spares,
                              gpu_spare_idle=s.image_gpu_spare_idle)

    store = Store(cache_dir("rootfs"), disk_budget_mb=s.image_disk_budget_mb,
                  step_timeout=s.image_step_timeout, network=box.network)
    # Images with pip_install steps: a cached virtual environment each; images with steps
    # beyond those (apt_install, run_commands, another Python...): a root filesystem each.
    return VenvRuntime(process(s.python), in_venv, store=store, make_view=in_image,
                       warm_images=s.image_warm_runtimes,
                       evict_interval=s.image_evict_interval)


def parse_imports(raw: str) -> list[str]:
    """``BURST_ZYGOTE_IMPORTS``: comma-separated module names ("torch,numpy.linalg")."""
    names = [n.strip() for n in raw.split(",") if n.strip()]
    for n in names:
        if not all(part.isidentifier() for part in n.split(".")):
            raise ValueError(f"BURST_ZYGOTE_IMPORTS: {n!r} is not a module name (use "
                             "comma-separated dotted names, e.g. torch,numpy.linalg)")
    return names
