"""The process runtime's sandbox: bubblewrap namespaces, cgroup v1 limits, a non-root uid.

What user code sees (a fresh interpreter and a zygote fork alike): an empty root with, read
only, what the interpreter needs (``/usr`` and the ``/lib*``, ``/bin`` links, the files of
``/etc`` that TLS, name resolution and the linker use, the interpreter's prefix and
site-packages, Burst's source, images' venvs; with GPUs, their device nodes and ``/sys``),
its own ``/etc/passwd``; nothing else of the host (not ``/home``, ``/root``, Burst's state
or the rest of its checkout); bwrap's options reach it through a memfd (``--args``), so the
sandbox's pid 1 shows no host path; a private writable ``/tmp`` (its ``HOME``); the app's
bundle read-only at ``/run/burst/bundle`` (its working directory);
``/run/burst/shim.sock``, the agent's socket, its only way to the cluster; its own pid,
ipc, uts and network namespaces (the network: NAT to the internet with deny rules,
``network.py``, or none at all with ``block_network=True`` or where the agent cannot give
one).

Invariants: cgroup ``memory``, ``cpu`` and ``pids`` limits are joined before any user code
runs, so every process and thread is accounted and a fork bomb stops at ``pids_limit``;
as root, the container runs as ``sandbox_uid`` (not root, no capabilities, no-new-privs),
so root's files stay unreadable; not as root, bwrap runs unprivileged in a user namespace
and the container keeps the agent's uid.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from burst_agent.runtimes.network import Network
from burst_core import logs

log = logs.get("burst.agent.sandbox")

#: Paths inside the sandbox.
BUNDLE = "/run/burst/bundle"
SOCKET = "/run/burst/shim.sock"
#: What of the host every container sees read-only (those that exist): the system's
#: programs and libraries (merged-/usr links made again as links), the files of ``/etc``
#: that TLS, name resolution, the dynamic linker and pip need, and the CPUs' topology.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = ("ssl", "ca-certificates", "ca-certificates.conf", "pki", "crypto-policies",
             "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone",
             "nsswitch.conf", "host.conf", "hosts", "gai.conf", "mime.types", "protocols",
             "services", "alternatives", "os-release", "debian_version", "pip.conf",
             "python3", "python3.11", "matplotlibrc")
CPU_SYSFS = "/sys/devices/system/cpu"
#: A spare sandbox's (made before its container was known): a read-only directory where
#: the agent links the container's socket once the container takes the sandbox.
SOCKET_DIR = "/run/burst/agent"
PRIVATE = "/tmp"

CGROUP_ROOT = Path("/sys/fs/cgroup")
CFS_PERIOD_US = 100_000
MIN_MEMORY_MB = 16
#: Tasks (processes and threads) a container may have at once, unless set otherwise
#: (``BURST_CONTAINER_PIDS_LIMIT``); the floor leaves the shim room for its own threads.
DEFAULT_PIDS_LIMIT = 4096
MIN_PIDS_LIMIT = 16


def interpreter_env() -> dict[str, str]:
    """The environment a container's interpreter (the agent's own) needs to import Burst
    and its packages as the agent does: ``PYTHONPATH`` where the agent runs with one (Burst
    from a source tree rather than installed, as on a machine with no package index)."""
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": path} if path else {}


class SandboxUnavailable(RuntimeError):
    pass


# ---- cgroups ---------------------------------------------------------------------------
def _own_cgroup(controller: str) -> str:
    """This process's cgroup path for a v1 controller ("/" when not found)."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, ctrls, path = line.split(":", 2)
            if controller in ctrls.split(","):
                return path
    except OSError:
        pass
    return "/"


def check_pids_limit(value: int) -> int:
    """``value`` if it is a valid container pids limit, else a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < MIN_PIDS_LIMIT:
        raise ValueError(f"BURST_CONTAINER_PIDS_LIMIT={value!r} is not valid: use a whole "
                         f"number of tasks (processes and threads) of at least {MIN_PIDS_LIMIT}")
    return value


@dataclass
class Cgroup:
    """One container's cgroups (v1 ``memory``, ``cpu`` and, where the machine has the
    controller, ``pids``), nested under the agent's own."""

    dirs: dict[str, Path]
    memory_limit_mb: int
    pids_limit: int | None = None

    @classmethod
    def parent_dirs(cls, agent_id: str) -> dict[str, Path] | None:
        """The agent's cgroup parents; None when cgroup v1 memory and cpu are not writable
        here. ``pids`` is among them when its controller is mounted and writable too."""
        out: dict[str, Path] = {}
        for ctrl in ("memory", "cpu", "pids"):
            base = CGROUP_ROOT / ctrl
            own = base / _own_cgroup(ctrl).lstrip("/")
            if not (base / "cgroup.procs").exists() or not os.access(own, os.W_OK):
                if ctrl == "pids":
                    break  # optional: the caller says that pids go unlimited
                return None
            # Created with the first container, removed with the last: nothing is left
            # behind by an agent that stops.
            out[ctrl] = own / f"burst-{agent_id}"
        return out

    @classmethod
    def create(cls, parents: dict[str, Path], container_id: str, cpu: float,
               cpu_limit: float, memory_limit_mb: int,
               pids_limit: int = DEFAULT_PIDS_LIMIT) -> Cgroup:
        dirs = {ctrl: p / container_id for ctrl, p in parents.items()}
        for d in dirs.values():
            for attempt in range(3):  # the parent may be going with another container
                try:
                    d.mkdir(parents=True, exist_ok=True)
                    break
                except FileNotFoundError:
                    if attempt == 2:
                        raise
        try:
            return cls._limit(dirs, cpu, cpu_limit, memory_limit_mb, pids_limit)
        except OSError:
            cls(dirs, memory_limit_mb).remove()  # none left half made
            raise

    @classmethod
    def _limit(cls, dirs: dict[str, Path], cpu: float, cpu_limit: float,
               memory_limit_mb: int, pids_limit: int) -> Cgroup:
        mem = max(MIN_MEMORY_MB, memory_limit_mb)
        (dirs["memory"] / "memory.limit_in_bytes").write_text(str(mem << 20))
        # No swap beyond the limit where the kernel accounts it (memsw), so the limit holds.
        with contextlib.suppress(OSError):
            (dirs["memory"] / "memory.memsw.limit_in_bytes").write_text(str(mem << 20))
        # The request is a weight (1024 = one core), honoured when cores are contended; the
        # limit is a CFS quota (the kernel's floor is 1 ms per period, i.e. 0.01 cores).
        (dirs["cpu"] / "cpu.shares").write_text(str(max(2, int(cpu * 1024))))
        (dirs["cpu"] / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
        quota = max(1000, int(max(cpu, cpu_limit) * CFS_PERIOD_US))
        (dirs["cpu"] / "cpu.cfs_quota_us").write_text(str(quota))
        if "pids" not in dirs:
            return cls(dirs, mem)
        # Counts every task in the cgroup (processes and threads); a fork or clone past it
        # fails with EAGAIN inside the container only.
        (dirs["pids"] / "pids.max").write_text(str(pids_limit))
        return cls(dirs, mem, pids_limit)

    def set_limits(self, cpu: float, cpu_limit: float, memory_limit_mb: int,
                   pids_limit: int) -> None:
        """New limits on a live cgroup (an image's spare python taken by a container): a
        memory limit below what it uses fails (``OSError``), the rest are only written."""
        done = self._limit(self.dirs, cpu, cpu_limit, memory_limit_mb, pids_limit)
        self.memory_limit_mb, self.pids_limit = done.memory_limit_mb, done.pids_limit

    def rename(self, name: str) -> None:
        """Name the cgroup after its container (cgroup v1 renames a live cgroup in place);
        where it cannot, it keeps its name."""
        for ctrl, d in list(self.dirs.items()):
            new = d.with_name(name)
            if new == d:
                continue
            try:
                d.rename(new)
                self.dirs[ctrl] = new
            except OSError as e:
                log.warning("cgroup_rename_failed", cgroup=str(d), name=name, error=repr(e))

    def tasks_files(self) -> list[str]:
        """The files a single-threaded process joins by writing ``0`` (itself) to.

        Not ``cgroup.procs``: moving a whole process takes the kernel's global threadgroup
        lock for writing, an RCU grace period each time (5-25 ms on a quiet machine);
        moving the writer's own single thread through ``tasks`` skips that lock (on
        kernels with the single-thread migration fast path; older ones take it anyway).
        A process that has not started threads yet (a fork before exec, the zygote's
        keeper) is its one thread, so it moves whole.
        """
        return [str(d / "tasks") for d in self.dirs.values()]

    def oom_killed(self) -> bool:
        """Whether the kernel's OOM killer acted in this cgroup (or it hit its limit)."""
        try:
            text = (self.dirs["memory"] / "memory.oom_control").read_text()
        except OSError:
            return False
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and int(value) > 0:
                return True
        return False

    def at_limit(self) -> bool:
        try:
            return int((self.dirs["memory"] / "memory.failcnt").read_text()) > 0
        except (OSError, ValueError):
            return False

    def remove(self) -> None:
        for d in self.dirs.values():
            # Tasks leave asynchronously after the last process exits: retry briefly.
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    with contextlib.suppress(OSError):
                        for pid in (d / "cgroup.procs").read_text().split():
                            os.kill(int(pid), signal.SIGKILL)
                    time.sleep(0.01)
            # The agent's parent cgroup goes with its last container (busy otherwise).
            with contextlib.suppress(OSError):
                d.parent.rmdir()


# ---- availability ----------------------------------------------------------------------
@dataclass
class Sandbox:
    """The agent's sandbox policy; ``mode`` is ``auto``, ``on`` or ``off``."""

    mode: str
    agent_id: str
    home: str
    uid: int = 65534
    gid: int = 65534
    bwrap: str | None = None
    setpriv: str | None = None
    cgroup_parents: dict[str, Path] | None = None
    #: Host paths bound read-only into every container, and the system's top-level links
    #: (``/bin -> usr/bin``) made again inside (see ``_plan_view``).
    binds: list[str] = field(default_factory=list)
    symlinks: list[tuple[str, str]] = field(default_factory=list)
    #: Covered by an empty tmpfs (Burst's state, where a bound dir holds it).
    hidden: list[str] = field(default_factory=list)
    #: The container's ``/etc/passwd`` and ``/etc/group``.
    etc_dir: Path | None = None
    #: Cores above the request a container may use (see AgentSettings.cpu_headroom).
    cpu_headroom: float = 1.0
    #: Tasks a container may have at once (see AgentSettings.container_pids_limit).
    pids_limit: int = DEFAULT_PIDS_LIMIT
    #: Containers' network (``network.py``); None or disabled: they get none.
    network: Network | None = None

    @classmethod
    def detect(cls, mode: str, agent_id: str, home: str, uid: int = 65534,
               cpu_headroom: float = 1.0, pids_limit: int = DEFAULT_PIDS_LIMIT) -> Sandbox:
        if mode not in ("auto", "on", "off"):
            raise ValueError(f"BURST_SANDBOX={mode!r} is not valid: use auto, on or off")
        sb = cls(mode=mode, agent_id=agent_id, home=home, uid=uid, gid=uid,
                 cpu_headroom=cpu_headroom, pids_limit=check_pids_limit(pids_limit))
        if mode == "off":
            log.warning("sandbox_off", detail="BURST_SANDBOX=off: containers run as plain "
                        "processes that can read Burst's state and reach the network, "
                        "with no CPU, memory or pids limit (a fork bomb in one reaches the "
                        "host's)")
            return sb
        why = sb._probe()
        if why:
            if mode == "on":
                raise SandboxUnavailable(f"BURST_SANDBOX=on but {why}")
            log.warning("sandbox_unavailable", detail=f"{why}: containers run WITHOUT a "
                        "sandbox and can read Burst's state ($BURST_HOME) and reach the "
                        "network, with no CPU, memory or pids limit; install bubblewrap "
                        "(apt-get install bubblewrap)")
            sb.bwrap = None
            return sb
        sb.cgroup_parents = Cgroup.parent_dirs(agent_id)
        if sb.cgroup_parents is None:
            log.warning("cgroups_unavailable", detail="cgroup v1 memory/cpu not writable: "
                        "containers run without CPU, memory and pids limits")
        elif "pids" not in sb.cgroup_parents:
            log.warning("pids_cgroup_unavailable", detail="cgroup v1 pids controller not "
                        "mounted or not writable: containers' processes and threads are "
                        f"unlimited (BURST_CONTAINER_PIDS_LIMIT={sb.pids_limit} not applied)")
        sb._plan_view()
        pids = sb.pids_limit if sb.cgroup_parents and "pids" in sb.cgroup_parents else None
        log.info("sandbox_ready", bwrap=sb.bwrap, uid=sb.uid,
                 cgroups=bool(sb.cgroup_parents), pids_limit=pids, visible=sb.binds)
        return sb

    @property
    def enabled(self) -> bool:
        return self.bwrap is not None

    def _probe(self) -> str:
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            return "bubblewrap (bwrap) is not installed"
        if os.geteuid() != 0:
            # Not root: bwrap runs as this user; the uid inside is ours (non-root anyway).
            self.uid, self.gid = os.getuid(), os.getgid()
        self.bwrap = bwrap
        if os.geteuid() == 0:
            self.setpriv = shutil.which("setpriv")
            if self.setpriv is None:
                self.bwrap = None
                return "setpriv (util-linux) is not installed: cannot drop to a non-root uid"
        try:
            proc = subprocess.run(
                self._bwrap_head() + ["--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev",
                                      "--", *self._drop(), "/bin/true"],
                capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError) as e:
            return f"bwrap cannot run ({e!r})"
        if proc.returncode != 0:
            self.bwrap = None
            return f"bwrap cannot create a sandbox here: {proc.stderr.strip()[:300]}"
        return ""

    def networked(self, block_network: bool) -> bool:
        """Whether a container gets NAT (else no network at all)."""
        return not block_network and self.network is not None and self.network.enabled

    def _bwrap_head(self, networked: bool = False) -> list[str]:
        assert self.bwrap is not None
        if os.geteuid() == 0:
            # Every namespace but the user one: the uid drop happens inside (setpriv).
            # Networked, the namespace is made before bwrap (``Network.prefix``), so that
            # the agent can set it up before the container runs.
            assert self.network is not None or not networked
            return [*(self.network.prefix() if self.network and networked else []),
                    self.bwrap, "--unshare-ipc", "--unshare-pid",
                    *([] if networked else ["--unshare-net"]),
                    "--unshare-uts", "--unshare-cgroup-try", "--die-with-parent"]
        return [self.bwrap, "--unshare-all", "--die-with-parent"]

    def _drop(self) -> list[str]:
        """The command prefix that becomes the sandbox uid (as root), else nothing."""
        if os.geteuid() != 0:
            return []
        assert self.setpriv is not None
        return [self.setpriv, f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups",
                "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]

    def _plan_view(self) -> None:
        """What of the host a container sees (read-only): the system's programs and
        libraries, the few files of ``/etc`` they need, and what the interpreter needs
        (its prefix, site-packages, Burst's source, images' venvs); nothing else (no
        ``/home``, no ``/root``, no host ``/etc/passwd``, not the rest of the checkout)."""
        import burst
        from burst_agent.runtimes.images import cache_dir

        # Images' virtual environments (the process runtime's pip_install) live in the
        # machine's cache, which CI keeps inside its checkout (possibly under /tmp).
        venvs = cache_dir("venvs")
        venvs.mkdir(parents=True, exist_ok=True)
        needed = {sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable)),
                  os.path.dirname(os.path.dirname(os.path.realpath(burst.__file__))),
                  str(venvs), *(p for p in sys.path if p and os.path.isdir(p))}
        system = [d for d in SYSTEM_DIRS if os.path.lexists(d)]
        self.symlinks = [(os.readlink(d), d) for d in system if os.path.islink(d)]
        binds = [d for d in system if not os.path.islink(d)]
        binds += [p for p in (os.path.join("/etc", f) for f in ETC_FILES)
                  if os.path.exists(p)]
        # Never Burst's state (the agent's working directory, on its sys.path, is there).
        home = os.path.realpath(self.home)
        binds += sorted(p for p in (os.path.realpath(n) for n in needed)
                        if p != home and not p.startswith(home + os.sep))
        if os.path.isdir(CPU_SYSFS):
            binds.append(CPU_SYSFS)
        # Nested ones go: their parent is bound already.
        self.binds = [p for p in dict.fromkeys(binds)
                      if not any(p.startswith(q + os.sep) for q in binds if q != p)]
        # Burst's state stays covered even where a bound dir holds it.
        self.hidden = [home] if any(home.startswith(b + os.sep) for b in self.binds) else []
        # The container's own users: root and the sandbox uid, not the host's.
        self.etc_dir = Path(self.home) / "agent" / self.agent_id / "sandbox-etc"
        self.etc_dir.mkdir(parents=True, exist_ok=True)
        name = "nobody" if self.uid == 65534 else "burst"
        (self.etc_dir / "passwd").write_text(
            "root:x:0:0:root:/root:/usr/sbin/nologin\n"
            f"{name}:x:{self.uid}:{self.gid}:{name}:/tmp:/usr/sbin/nologin\n")
        (self.etc_dir / "group").write_text(f"root:x:0:\n{name}:x:{self.gid}:\n")
        for f in ("passwd", "group"):
            os.chmod(self.etc_dir / f, 0o644)

    def _dirs_to(self, path: str) -> list[str]:
        """``--dir`` arguments (mode 0755) for the directories leading to ``path`` (bwrap
        would make them 0700, root's: the uid could not traverse them)."""
        parts = Path(path).parts[1:-1]
        out: list[str] = []
        for i in range(len(parts)):
            out += ["--perms", "0755", "--dir", os.path.join("/", *parts[: i + 1])]
        return out

    # ---- one container -------------------------------------------------------------
    def prepare(self, container_id: str, private_dir: Path | None, cpu: float,
                memory_limit_mb: int, cpu_limit: float = 0.0) -> Cgroup | None:
        """Create the container's private dir (owned by the sandbox uid; none for a spare
        sandbox, which has its own) and cgroups; the CPU limit is ``cpu_limit`` if set,
        else the request plus the agent's headroom; the pids limit is the agent's."""
        if private_dir is not None:
            self.private_dir(private_dir)
        if self.cgroup_parents is None:
            return None
        try:
            return Cgroup.create(self.cgroup_parents, container_id, cpu,
                                 cpu_limit or cpu + self.cpu_headroom, memory_limit_mb,
                                 self.pids_limit)
        except OSError as e:
            log.warning("cgroup_create_failed", container_id=container_id, error=repr(e))
            return None

    def private_dir(self, path: Path) -> None:
        """A container's private dir (its ``/tmp``), owned by the sandbox uid."""
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o700)
        if os.geteuid() == 0:
            os.chown(path, self.uid, self.gid)

    def command(self, argv: list[str], *, bundle_dir: Path, socket_path: Path | None,
                private_dir: Path, gpu_indices: list[int], extra: list[str] | None = None,
                socket_dir: Path | None = None, networked: bool = False,
                rootfs: tuple[Path, Path] | None = None, cwd: str = BUNDLE,
                mounts: list[tuple[Path, str, bool]] | None = None) -> list[str]:
        """The bwrap command line running ``argv`` in a fresh sandbox. With ``socket_dir``
        (a spare sandbox) that directory is bound read-only at ``SOCKET_DIR`` instead of
        ``socket_path`` at ``SOCKET``. ``networked``: in a network namespace of its own
        that the caller sets up (``Network.attach``) before the container's code runs.
        ``rootfs``: (an image's read-only root, Burst's shim for it), see ``rootfs.py``:
        the container sees that root instead of the host's system (and the shim at
        ``rootfs.SHIM_DIR``)."""
        # No --new-session: the agent signals the whole process group (stdin is /dev/null).
        args = self._bwrap_head(networked)
        if rootfs is not None:
            # The image's filesystem, read-only, with the shim; nothing of the host's.
            from burst_agent.runtimes.rootfs import SHIM_DIR

            args += ["--ro-bind", str(rootfs[0]), "/", "--bind", str(private_dir), PRIVATE,
                     "--ro-bind", str(rootfs[1]), SHIM_DIR]
        else:
            # An empty root (bwrap's tmpfs) with only what ``_plan_view`` chose bound in.
            for target, link in self.symlinks:
                args += ["--symlink", target, link]
            # The private /tmp first, so what is bound below it lands on top of it.
            args += ["--bind", str(private_dir), PRIVATE]
            for p in self.binds:
                args += [*self._dirs_to(p), "--ro-bind", p, p]
            for h in self.hidden:
                args += ["--tmpfs", h]
        assert self.etc_dir is not None
        args += ["--ro-bind", str(self.etc_dir / "passwd"), "/etc/passwd",
                 "--ro-bind", str(self.etc_dir / "group"), "/etc/group"]
        if networked:
            assert self.network is not None
            args += ["--ro-bind", str(self.network.resolv_conf), "/etc/resolv.conf"]
        elif os.path.exists("/etc/resolv.conf"):
            args += ["--ro-bind", os.path.realpath("/etc/resolv.conf"), "/etc/resolv.conf"]
        args += ["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/dev/shm"]
        for host, inside in _gpu_devices(gpu_indices):
            args += ["--dev-bind", host, inside]
        if rootfs is not None and gpu_indices:
            # An image lacks the host's GPU driver: its libraries and tools, each file bound
            # read-only into a directory of their own (on the container's library path and
            # PATH: ``ProcessRuntime._env``), as the NVIDIA container toolkit does for Docker.
            args += ["--tmpfs", GPU_DRIVER_DIR, "--dir", f"{GPU_DRIVER_DIR}/bin"]
            for host, inside in gpu_driver_files():
                args += ["--ro-bind", host, f"{GPU_DRIVER_DIR}/{inside}"]
        if gpu_indices and os.path.isdir("/sys"):
            args += ["--ro-bind", "/sys", "/sys"]  # the driver's view of the devices
        args += ["--perms", "0755", "--dir", os.path.dirname(BUNDLE),
                 "--ro-bind", str(bundle_dir), BUNDLE]
        if socket_dir is not None:
            args += ["--ro-bind", str(socket_dir), SOCKET_DIR]
        else:
            args += ["--bind", str(socket_path), SOCKET]
        for source, target, read_only in mounts or ():  # volumes, last: nothing hides them
            args += [*self._dirs_to(target), "--ro-bind" if read_only else "--bind",
                     str(source), target]
        args += ["--chdir", cwd, *(extra or []), "--", *self._drop(), *argv]
        return args

    def preexec(self, cgroup: Cgroup | None) -> Callable[[], None]:
        tasks = cgroup.tasks_files() if cgroup else []

        def child() -> None:
            # Join the container's cgroups before exec, so nothing runs unaccounted (the
            # forked child has one thread: writing 0 to ``tasks`` moves all of it).
            for f in tasks:
                with open(f, "w") as fh:
                    fh.write("0")
            die_with_parent()

        return child

    def socket_ready(self, socket_path: Path) -> None:
        """Let the sandbox uid connect to the agent's socket for this container."""
        if os.geteuid() == 0:
            os.chown(socket_path, self.uid, self.gid)
        os.chmod(socket_path, 0o600)


def hide_args(argv: list[str]) -> tuple[list[str], int]:
    """``argv`` with bwrap's own arguments moved into a memfd it reads (``--args FD``), so
    that the sandbox's pid 1 (bwrap) shows no host path in ``/proc/1/cmdline``. Returns the
    short command line and the fd (the caller passes it on, then closes it)."""
    i = next(i for i, a in enumerate(argv) if os.path.basename(a) == "bwrap")
    end = argv.index("--", i)  # the command itself stays on the command line (bwrap's rule)
    fd = os.memfd_create("bwrap-args", 0)  # (not inherited unless passed)
    os.write(fd, b"".join(a.encode() + b"\0" for a in argv[i + 1:end]))
    os.lseek(fd, 0, os.SEEK_SET)
    return [*argv[: i + 1], "--args", str(fd), *argv[end:]], fd


#: Where an image's container with GPUs finds the host's driver (``gpu_driver_files``).
GPU_DRIVER_DIR = "/run/burst/nvidia"
#: The NVIDIA driver's user-space libraries and tools (as the container toolkit lists them).
_DRIVER_LIBS = ("libcuda.so", "libcudadebugger.so", "libnvidia-ml.so",
                "libnvidia-ptxjitcompiler.so", "libnvidia-nvvm.so", "libnvidia-opencl.so",
                "libnvidia-gpucomp.so",
                "libnvidia-allocator.so", "libnvidia-cfg.so", "libnvidia-fatbinaryloader.so",
                "libnvidia-compiler.so", "libnvcuvid.so", "libnvidia-encode.so",
                "libnvidia-opticalflow.so", "libnvidia-pkcs11.so")
_DRIVER_BINS = ("nvidia-smi", "nvidia-debugdump", "nvidia-persistenced")
DRIVER_LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib/aarch64-linux-gnu",
                   "/usr/local/nvidia/lib64", "/usr/local/nvidia/lib", "/usr/lib")
_driver_files: list[tuple[str, str]] | None = None


def gpu_driver_files(lib_dirs: tuple[str, ...] = DRIVER_LIB_DIRS,
                     bin_dirs: tuple[str, ...] = ("/usr/bin", "/usr/local/nvidia/bin"),
                     ) -> list[tuple[str, str]]:
    """The host's NVIDIA driver files an image's container needs with GPUs: (host file,
    name under ``GPU_DRIVER_DIR``), each link name bound to the file it resolves to. Found
    once per agent (the driver does not change under a running agent)."""
    global _driver_files
    if _driver_files is not None and lib_dirs == DRIVER_LIB_DIRS:
        return _driver_files
    found: dict[str, str] = {}
    for d in lib_dirs:
        with contextlib.suppress(OSError):
            for name in sorted(os.listdir(d)):
                if name.startswith(_DRIVER_LIBS) and name not in found:
                    real = os.path.realpath(os.path.join(d, name))
                    if os.path.isfile(real):
                        found[name] = real
    out = [(real, name) for name, real in found.items()]
    for d in bin_dirs:
        for name in _DRIVER_BINS:
            p = os.path.join(d, name)
            if os.path.isfile(p) and not any(i == f"bin/{name}" for _, i in out):
                out.append((os.path.realpath(p), f"bin/{name}"))
    if lib_dirs == DRIVER_LIB_DIRS:
        _driver_files = out
    return out


#: Where the host's NVIDIA device nodes are (tests point it at stand-ins made by mknod).
GPU_DEV_DIR = "/dev"


def _gpu_devices(indices: list[int]) -> list[tuple[str, str]]:
    """The NVIDIA device nodes a container with these GPUs needs (those that exist): (host
    path, path in the container)."""
    if not indices:
        return []
    names = ["nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset",
             *(f"nvidia{i}" for i in indices)]
    return [(os.path.join(GPU_DEV_DIR, n), f"/dev/{n}") for n in names
            if os.path.exists(os.path.join(GPU_DEV_DIR, n))]


def die_with_parent() -> None:
    """In a child: get SIGKILL if the agent dies, so no container outlives its agent."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # not Linux: the shim still exits when the agent's socket closes
        pass
