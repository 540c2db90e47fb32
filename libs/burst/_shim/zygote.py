"""The zygote: a warm interpreter that forks containers instead of starting fresh ones.

``python -m burst._shim.zygote`` (started by the agent, as root, with a ``SOCK_SEQPACKET``
socket on the fd ``BURST_ZYGOTE_FD`` names) imports what every container needs once, says
``ready``, then serves one container per request (stdout, stderr, the sandbox holder's
stdin and a reply socket, with a JSON body), in three steps on the reply socket: it forks
a *keeper*; given the sandbox's pid (``target_pid``) the keeper joins its pid namespace
and forks the container (replying ``pid``); given ``go`` (environment, cwd, uid, gid,
cgroups) the container joins its cgroups and namespaces, drops every capability, becomes
the sandbox uid and runs the shim. So the fork overlaps bubblewrap's setup (for a spare
sandbox only ``go`` is on the start path).

A container of an agent without a sandbox (``target_pid`` 0) is forked the same way but
enters nothing: it only starts a session of its own, moves to its working directory and
takes its environment, as a fresh unsandboxed interpreter would have.

Before ``ready`` the zygote imports the modules ``BURST_ZYGOTE_IMPORTS`` names (comma
separated: what the functions' images declare they import, e.g. ``torch``), so a
container's first import of them is already done. CUDA must be initialised only after the
fork, in the container: a zygote in which an import initialised it (the driver answering a
query that needs ``cuInit``, or ``torch.cuda.is_initialized()``) says so instead of
``ready`` and exits, and the agent starts its containers as fresh interpreters.

Started by the agent as root in a sandboxed agent, the zygote is the agent's own trusted
interpreter: nothing of a user's image runs or is read by it. For an image's virtual
environment (``BURST_ZYGOTE_VENV``) it starts ``-I -S`` with Burst's paths given
(``BURST_ZYGOTE_PATH``), and only the container, once it is in the sandbox as the sandbox
uid, takes the environment's site-packages (and its ``.pth`` files); for an image's root
filesystem the container execs the image's own interpreter (``exec`` in ``go``) once it is
in the sandbox, as that uid.

Invariants: the holder exits with the container's exit code (the keeper writes it), and
with EOF if the keeper dies; a keeper whose reply socket closes before ``go`` kills what
it forked.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import sys

# What a container needs, imported once here rather than once per container.
import cloudpickle  # noqa: F401
import msgspec  # noqa: F401

import burst  # noqa: F401
from burst._shim import main as shim_main

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000
CLONE_NEWPID = 0x20000000
PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_MM = 35
PR_SET_MM_ENV_START = 10
PR_SET_MM_ENV_END = 11

_libc = ctypes.CDLL("libc.so.6", use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _setns(pid: int, name: str, kind: int) -> None:
    fd = os.open(f"/proc/{pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.setns(fd, kind), f"setns({name})")
    finally:
        os.close(fd)


def _prctl(option: int, arg: int, arg2: int = 0) -> int:
    return int(_libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(arg2), 0, 0))


def _container(target: int, out_fd: int, err_fd: int, go_fd: int, ctl_fd: int = -1) -> None:
    """In the container process (in the sandbox's pid namespace already): enter its
    network, ipc and uts namespaces, then, once told who it is (``go_fd``), the rest.
    ``ctl_fd`` (an image's spare python, ``burst._shim.spare``): its stdin, the socket on
    which the agent later sends who the container is."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if target == 0:
        _plain_container(out_fd, err_fd, go_fd)
        return
    for name, kind in (("net", CLONE_NEWNET), ("ipc", CLONE_NEWIPC), ("uts", CLONE_NEWUTS)):
        if os.readlink(f"/proc/{target}/ns/{name}") != os.readlink(f"/proc/self/ns/{name}"):
            _setns(target, name, kind)
    data = b""
    while chunk := os.read(go_fd, 1 << 16):
        data += chunk
    if not data:  # the sandbox did not come up, or nobody took it
        os._exit(1)
    os.close(go_fd)
    req = json.loads(data)
    # Into the container's cgroups before anything of it runs. One thread (a fork): writing
    # 0 to ``tasks`` moves all of it, without the global lock that moving a whole process
    # through cgroup.procs takes (an RCU grace period).
    for tasks in req["cgroup_tasks"]:
        with open(tasks, "w") as f:
            f.write("0")
    if os.readlink(f"/proc/{target}/ns/cgroup") != os.readlink("/proc/self/ns/cgroup"):
        _setns(target, "cgroup", CLONE_NEWCGROUP)
    # The mount namespace last; setns leaves our root at the namespace's first mount, not
    # where bwrap pivoted to, so take the sandbox's root from its init and chroot there.
    root = os.open(f"/proc/{target}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    _setns(target, "mnt", CLONE_NEWNS)
    os.fchdir(root)
    os.chroot(".")
    os.close(root)
    os.chdir(req["cwd"])
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(ctl_fd if ctl_fd >= 0 else null, 0)
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    os.closerange(3, 65536)
    _set_proc_environ(req["env"])
    for cap in range(64):  # the bounding set first: dropping it needs CAP_SETPCAP
        _prctl(PR_CAPBSET_DROP, cap)
    uid, gid = req["uid"], req["gid"]
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)  # from root to a non-root uid: every capability goes
    _check(_prctl(PR_SET_NO_NEW_PRIVS, 1), "no_new_privs")
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # a uid change cleared it
    if req.get("exec"):  # an image's own interpreter, inside its root, as the sandbox uid
        argv = [str(a) for a in req["exec"]]
        os.execvpe(argv[0], argv, req["env"])
    if _VENV:
        _enter_venv(_VENV)
    _run_shim(req["env"])


#: The image's virtual environment this zygote's containers run in (``BURST_ZYGOTE_VENV``):
#: its site-packages are processed in the container only, never in the zygote.
_VENV = ""


def _enter_venv(root: str) -> None:
    """In the container (in its sandbox, as its uid): the virtual environment at ``root``,
    as ``site`` would have made it at startup: its prefix, and its site-packages (with their
    ``.pth`` files) after the standard library and before Burst's own paths."""
    import site

    shim = [p for p in os.environ.get("BURST_ZYGOTE_PATH", "").split(os.pathsep) if p]
    sys.prefix = sys.exec_prefix = root
    sys.executable = os.path.join(root, "bin", "python")
    before = list(sys.path)
    site.addsitedir(os.path.join(root, "lib", f"python{sys.version_info[0]}."
                                 f"{sys.version_info[1]}", "site-packages"))
    added = [p for p in sys.path if p not in before]
    sys.path[:] = ([p for p in before if p not in shim] + added
                   + [p for p in before if p in shim])


def _read_go(go_fd: int) -> dict[str, object]:
    data = b""
    while chunk := os.read(go_fd, 1 << 16):
        data += chunk
    if not data:  # nobody took this container
        os._exit(1)
    os.close(go_fd)
    req: dict[str, object] = json.loads(data)
    return req


def _plain_container(out_fd: int, err_fd: int, go_fd: int) -> None:
    """An unsandboxed container: a session of its own (signalled as a group), its working
    directory and environment; the agent's uid, as a fresh interpreter would run."""
    req = _read_go(go_fd)
    os.setsid()
    os.chdir(str(req["cwd"]))
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    os.closerange(3, 65536)
    env = req["env"]
    assert isinstance(env, dict)
    _set_proc_environ(env)
    _run_shim(env)


def _run_shim(env: dict[str, str]) -> None:
    os.environ.clear()
    os.environ.update(env)
    sys.argv = [shim_main.__file__]
    code = 0
    try:
        shim_main.main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
    os._exit(code)


_environ_block: ctypes.Array[ctypes.c_char] | None = None


def _set_proc_environ(env: dict[str, str]) -> None:
    """Point /proc/<pid>/environ at the container's environment, as if it had been exec'd
    with it (tools and tests find a container's processes by BURST_CONTAINER_ID)."""
    global _environ_block
    data = b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items())
    _environ_block = ctypes.create_string_buffer(data, len(data))
    start = ctypes.addressof(_environ_block)
    end = start + len(data)
    # The kernel wants start < end after each step: order the two updates accordingly.
    steps = [(PR_SET_MM_ENV_START, start), (PR_SET_MM_ENV_END, end)]
    if _prctl(PR_SET_MM, PR_SET_MM_ENV_END, end) == 0:
        steps = [(PR_SET_MM_ENV_START, start)]
    for option, value in steps:
        _prctl(PR_SET_MM, option, value)


def _keeper(fds: list[int]) -> None:
    """In the keeper (forked per request): fork the container, report it, wait for it."""
    out_fd, err_fd, exit_fd, reply_fd, *rest = fds
    ctl_fd = rest[0] if rest else -1  # a spare python's control socket
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    # No parent-death signal here: a zygote that dies (and is restarted) must not take the
    # running containers with it. The keeper still ends with its container, and the
    # container with the agent (its sandbox's holder dies with the agent, and with it the
    # pid namespace).
    reply = socket.socket(fileno=reply_fd)
    try:
        msg = reply.recv(4096)  # the sandbox's namespaces exist
        if not msg:  # the sandbox did not come up: nothing to fork
            os._exit(0)
        target = int(json.loads(msg)["target_pid"])
        if target != 0:  # 0: no sandbox, nothing to enter
            _setns(target, "pid", CLONE_NEWPID)
        go_r, go_w = os.pipe()
        child = os.fork()
    except BaseException as e:
        reply.send(json.dumps({"error": repr(e)}).encode())
        os._exit(1)
    if child == 0:
        try:
            reply.close()
            os.close(exit_fd)
            os.close(go_w)
            _container(target, out_fd, err_fd, go_r, ctl_fd)
        except BaseException as e:
            os.write(err_fd, f"burst zygote: cannot enter the sandbox: {e!r}\n".encode())
        os._exit(126)
    os.close(go_r)
    os.close(out_fd)
    os.close(err_fd)
    if ctl_fd >= 0:
        os.close(ctl_fd)
    try:
        reply.send(json.dumps({"pid": child}).encode())
        go = json.loads(reply.recv(1 << 20) or b"{}").get("go")  # who the container is
    except (OSError, ValueError):
        go = None
    reply.close()
    if go is not None:
        data = json.dumps(go).encode()
        while data:  # the container reads as we write
            data = data[os.write(go_w, data):]
    else:  # the agent gave up on this sandbox
        os.kill(child, signal.SIGKILL)
    os.close(go_w)
    _, status = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(status)
    try:
        os.write(exit_fd, f"{code if code >= 0 else 128 - code}\n".encode())
    except OSError:
        pass  # the holder is gone already (the container was killed)
    os._exit(0)


def preimport(names: list[str]) -> list[str]:
    """Import ``names`` (what the functions' images declare); the errors, one line each (a
    module that fails here is imported, or fails, in the container as it would have)."""
    import importlib

    errors = []
    for name in names:
        try:
            importlib.import_module(name)
        except BaseException as e:  # noqa: BLE001 - any import-time failure is the user's
            errors.append(f"{name}: {type(e).__name__}: {e}")
    return errors


def cuda_initialised() -> str:
    """Why CUDA counts as initialised in this process ('' when it is not): PyTorch saying
    so, or the driver answering a query that needs ``cuInit``. The driver library merely
    mapped is not initialisation (importing torch maps it, and a child forked then still
    initialises CUDA itself); a forked child cannot use a parent's initialised CUDA."""
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_initialized():
                return "torch.cuda.is_initialized() is true"
        except Exception:  # noqa: BLE001 - a torch without CUDA support
            pass
    try:
        with open("/proc/self/maps") as f:
            mapped = sorted({line.split()[-1] for line in f if "libcuda.so" in line})
    except OSError:
        mapped = []
    for path in mapped:
        try:
            import ctypes

            count = ctypes.c_int(0)
            # CUDA_ERROR_NOT_INITIALIZED (3) until cuInit ran; 0 once it did.
            rc = ctypes.CDLL(path).cuDeviceGetCount(ctypes.byref(count))
        except (OSError, AttributeError):
            continue
        if rc == 0:
            return f"the CUDA driver was initialised ({path})"
    return ""


def serve(sock: socket.socket) -> None:
    # Keepers are reaped by the kernel: the zygote never waits for them.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    sock.send(b"ready")
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(sock, 1 << 20, 8)
        except InterruptedError:
            continue
        if not msg:
            return  # the agent is gone
        if len(fds) not in (4, 5):
            for fd in fds:
                os.close(fd)
            continue
        if os.fork() == 0:
            sock.close()
            try:
                _keeper(fds)
            finally:
                os._exit(1)
        for fd in fds:
            os.close(fd)


def main() -> None:
    global _VENV
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    _VENV = os.environ.pop("BURST_ZYGOTE_VENV", "")
    sock = socket.socket(fileno=int(os.environ.pop("BURST_ZYGOTE_FD")))
    names = [n for n in os.environ.pop("BURST_ZYGOTE_IMPORTS", "").split(",") if n.strip()]
    for err in preimport([n.strip() for n in names]):
        print(f"burst zygote: pre-import failed: {err}", file=sys.stderr, flush=True)
    why = cuda_initialised()
    if why:
        sock.send(f"cuda: {why} after importing {', '.join(names)}; CUDA must be "
                  "initialised only in the container".encode()[:4000])
        return
    serve(sock)


if __name__ == "__main__":
    main()
