"""``App``: a named group of functions, deployed and stopped together."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from burst import _context, _resources, _unsupported, schedules, web, wire
from burst import secret as _secret
from burst.cls import Cls
from burst.exception import InvalidError
from burst.functions import Function, is_generator
from burst.image import Image
from burst.retries import Retries
from burst.schedules import Cron, Period
from burst.secret import Secret
from burst.volume import Volume, coerce_mounts

if TYPE_CHECKING:
    from burst._logs import LogFollower
    from burst.client import Client

F = TypeVar("F", bound=Callable[..., Any])


_FUNCTION_ARGS = ("cpu", "memory", "gpu", "timeout", "scaledown_window", "min_containers",
                  "max_containers", "buffer_containers", "nonpreemptible", "retries", "name",
                  "schedule", "image", "secrets", "block_network", "volumes")


def _module_name(module: Any) -> str:
    """The name a container imports the app's module by (``__main__`` -> file stem)."""
    name = str(module.__name__)
    file = getattr(module, "__file__", None)
    if name == "__main__" and file:
        return os.path.splitext(os.path.basename(str(file)))[0]
    return name


def _with_secrets(fn: Function[..., Any]) -> wire.FunctionSpec:
    """The function's spec as deployed: its secrets read now, on the deploying machine
    (the spec the client keeps has none of their values)."""
    if not fn.secrets:
        return fn.spec
    return msgspec.structs.replace(fn.spec, secrets=[s._spec() for s in fn.secrets])


def _with_local_files(spec: wire.FunctionSpec, client: Client) -> wire.FunctionSpec:
    """The spec with the files its image adds as each container starts (``copy=False``)
    sent as bundles of their own (uploaded unless stored), each step naming its bundle."""
    from burst import _bundle

    image = spec.image
    if image is None or not any(s.mounted and s.files for s in image.steps):
        return spec
    steps = []
    for step in image.steps:
        if step.mounted and step.files:
            bundle = _bundle.of_files(step.files)
            if not client.has_bundle(bundle.hash):
                client.put_bundle(bundle.hash, bundle.data)
            step = msgspec.structs.replace(step, files={}, bundle=bundle.hash)
        steps.append(step)
    return msgspec.structs.replace(spec, image=msgspec.structs.replace(image, steps=steps))


class App:
    """A named group of functions.

    Example::

        import burst

        app = burst.App("hello")

        @app.function()
        def f(x: int) -> int:
            return x + 1

        @app.local_entrypoint()
        def main() -> None:
            print(f.remote(1))

    Run it with ``burst run hello.py``, deploy it with ``burst deploy hello.py``, or call
    functions inside ``with app.run(): ...`` from a script.
    """

    def __init__(self, name: str | None = None, *, image: Image | None = None,
                 tags: dict[str, str] | None = None, include_source: bool | None = None,
                 description: str | None = None, secrets: list[Secret] | None = None,
                 volumes: dict[str, Volume] | None = None, **others: Any) -> None:
        _unsupported.check_options("burst.App()", others, _unsupported.APP_OPTIONS,
                                   ["name", "image", "tags", "include_source", "description",
                                    "secrets", "volumes"])
        if tags is not None and not (isinstance(tags, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in tags.items())):
            raise InvalidError(f"burst.App: tags= takes a dict of str to str, got {tags!r}")
        if include_source is False:
            raise _unsupported.refuse("burst.App(include_source=False) (Burst always ships "
                                      "the app's source)")
        #: Labels of the app (Modal's ``tags``); kept on the client.
        self.tags = dict(tags or {})
        self.description = description
        if name is not None:
            try:
                wire.check_ident("app", name)
            except ValueError as e:
                raise InvalidError(str(e)) from None
        if image is not None and not isinstance(image, Image):
            raise InvalidError(f"burst.App: image= takes a burst.Image, got {image!r}")
        self.name = name
        #: The image of functions that do not name their own.
        self.image = image
        #: Secrets of every function, before the function's own.
        self.secrets = _secret.coerce("burst.App()", secrets)
        #: Volumes of every function (a function's own mount at a path replaces it).
        self.volumes = coerce_mounts("burst.App()", volumes)
        self.registered_functions: dict[str, Function[..., Any]] = {}
        self.local_entrypoints: dict[str, Callable[..., Any]] = {}
        self._client: Client | None = None
        self._deployed_name: str | None = None
        self._follower: LogFollower | None = None

    def __repr__(self) -> str:
        return f"<burst.App {self.name!r}>"

    # ---- definition ----------------------------------------------------------------
    def function(
        self,
        _warn_parentheses_missing: Any = None,
        *,
        cpu: float = 0.125,
        memory: int = 128,
        gpu: str | list[str] | None = None,
        timeout: float = 300,
        scaledown_window: float = 60,
        min_containers: int = 0,
        max_containers: int | None = None,
        buffer_containers: int = 0,
        nonpreemptible: bool = False,
        retries: int | Retries | None = None,
        name: str | None = None,
        schedule: Cron | Period | None = None,
        image: Image | None = None,
        secrets: list[Secret] | None = None,
        block_network: bool = False,
        volumes: dict[str, Volume] | None = None,
        **others: Any,
    ) -> Callable[[F], Function[..., Any]]:
        """Register a function to run in containers.

        ``cpu`` (cores) and ``memory`` (MiB) are requests; ``gpu`` is ``"H100"``,
        ``"H100:2"`` or an ordered list of fallbacks; ``timeout`` is per attempt (1 s to
        24 h, default 300 s; each retry gets a fresh one); ``retries`` is an int or a
        :class:`burst.Retries`; ``scaledown_window`` is how long an idle container is kept
        (1 s to 24 h, default 60 s; sooner stopped, least recently used first, when another
        function's call waits for its room, but never below ``min_containers``);
        ``schedule`` (:class:`burst.Cron` or :class:`burst.Period`) runs the function by
        itself once the app is deployed;
        ``image`` (:class:`burst.Image`) is the container image, by default the app's;
        ``secrets`` (:class:`burst.Secret`) become environment variables of its
        containers, after the app's (a later one's key overrides an earlier one's);
        ``volumes`` (``{"/data": burst.Volume}``) are mounted in its containers, after
        the app's; ``block_network=True`` gives its containers no network at all (by default they
        reach the internet, never the cluster, the host or private ranges).
        """
        if _warn_parentheses_missing is not None:
            raise InvalidError("use @app.function() with parentheses")
        if others.pop("include_source", None) is False:
            raise _unsupported.refuse("include_source=False (Burst always ships the app's "
                                      "source)")
        _unsupported.check_options("@app.function()", others, _unsupported.FUNCTION_OPTIONS,
                                   [*_FUNCTION_ARGS, "include_source"])
        res, fallbacks = _resources.resources(cpu, memory, gpu)
        t = _resources.timer("timeout", timeout)
        window = _resources.timer("scaledown_window", scaledown_window)
        mn = _resources.count("min_containers", min_containers)
        mx = _resources.count("max_containers", max_containers, lo=1, allow_none=True)
        buf = _resources.count("buffer_containers", buffer_containers)
        retry = Retries.coerce(retries)
        sched = schedules.spec_of(schedule)
        if not isinstance(block_network, bool):
            raise InvalidError(f"block_network= takes True or False, got {block_network!r}")
        if image is not None and not isinstance(image, Image):
            raise InvalidError(f"image= takes a burst.Image, got {image!r}")
        img = image or self.image
        fn_secrets = [*self.secrets, *_secret.coerce("@app.function()", secrets)]
        mounts = {**self.volumes, **coerce_mounts("@app.function()", volumes)}
        paths = sorted(mounts)
        for a, b in zip(paths, paths[1:], strict=False):
            if b.startswith(a + "/"):
                raise InvalidError(f"@app.function(): mount paths {a!r} and {b!r} overlap")
        vol_specs = [wire.VolumeMount(name=v.name, path=p, read_only=v._read_only,
                                      create_if_missing=v.create_if_missing)
                     for p, v in mounts.items()]
        if mx is not None and mn is not None and mn > mx:
            raise InvalidError(f"min_containers={mn} is above max_containers={mx}")

        def decorator(f: F) -> Function[..., Any]:
            if isinstance(f, Function):
                raise InvalidError(f"{f.name} is already a burst function")
            if not callable(f) or not hasattr(f, "__qualname__"):
                raise InvalidError(f"@app.function() needs a function, got {f!r}")
            if "<locals>" in f.__qualname__:
                raise InvalidError(f"{f.__qualname__}: functions must be defined at module level")
            fn_name = name or f.__name__
            try:
                wire.check_ident("function", fn_name.lower())
            except ValueError as e:
                raise InvalidError(str(e)) from None
            max_inputs, target_inputs = getattr(f, "__burst_concurrency__", (1, 1))
            module = sys.modules.get(f.__module__)
            spec = wire.FunctionSpec(
                name=fn_name.lower(), module=_module_name(module) if module else f.__module__,
                qualname=f.__qualname__, resources=res, gpu_fallbacks=fallbacks, timeout=t,
                scaledown_window=window, min_containers=mn or 0, max_containers=mx,
                buffer_containers=buf or 0, nonpreemptible=nonpreemptible,
                is_generator=is_generator(f),
                retries=retry.policy() if retry is not None else None,
                max_inputs=max_inputs, target_inputs=target_inputs, schedule=sched,
                image=img.spec if img is not None else None, block_network=block_network,
                volumes=vol_specs,
            )
            if spec.name in self.registered_functions:
                raise InvalidError(f"app {self.name!r} already has a function {spec.name!r}")
            endpoint = web.endpoint_of(f, spec.name)
            if endpoint is not None:
                spec.web = [endpoint]
                self._check_web(spec)
            fn = Function(f, self, spec)
            fn.secrets = fn_secrets
            self.registered_functions[spec.name] = fn
            return fn

        return decorator

    def cls(self, _warn_parentheses_missing: Any = None, **options: Any) -> Callable[[type], Cls]:
        """Register a class: one instance per container, ``@burst.enter`` once at start,
        ``@burst.exit`` at stop, ``@burst.method`` callable remotely. Takes the same
        options as :meth:`function`."""
        if _warn_parentheses_missing is not None:
            raise InvalidError("use @app.cls() with parentheses")
        if options.get("schedule") is not None:
            raise InvalidError("schedule= is for @app.function(): a class has no single "
                               "function to call on a tick")
        register = self.function(**options)

        def decorator(user_cls: type) -> Cls:
            if not isinstance(user_cls, type):
                raise InvalidError(f"@app.cls() needs a class, got {user_cls!r}")
            fn = register(user_cls)  # the class's spec: its name, module, resources
            cls = Cls(user_cls, fn, options)
            fn.spec.is_class = True
            fn.spec.web = [ep for m in cls.methods if (ep := web.endpoint_of(
                getattr(user_cls, m), f"{fn.spec.name}-{m}", method=m)) is not None]
            self._check_web(fn.spec)
            if not hasattr(user_cls, "__burst_concurrency__"):
                # @burst.concurrent / @burst.batched on methods: the container takes the
                # most inputs any of them takes.
                marks = [getattr(getattr(user_cls, m), "__burst_concurrency__", (1, 1))
                         for m in cls.methods]
                fn.spec.max_inputs = max(mi for mi, _ in marks)
                fn.spec.target_inputs = max(ti for _, ti in marks)
            return cls

        return decorator

    def _check_web(self, spec: wire.FunctionSpec) -> None:
        """No two web endpoints of the app answer one URL (checked as they are declared)."""
        try:
            web.check_unique([ep for f in self.registered_functions.values() if f.spec is not spec
                              for ep in f.spec.web] + spec.web, self.name)
        except InvalidError:
            self.registered_functions.pop(spec.name, None)
            raise

    def include(self, other: App, /) -> App:
        """Modal's ``app.include(other)``: not built yet."""
        raise _unsupported.refuse("app.include()")

    def local_entrypoint(self, name: str | None = None) -> Callable[[F], F]:
        """Mark the function ``burst run`` calls in the local process."""

        def decorator(f: F) -> F:
            self.local_entrypoints[name or f.__name__] = f
            return f

        return decorator

    # ---- running -------------------------------------------------------------------
    def _running(self) -> tuple[Client, str]:
        if self._client is None and _context.platform is not None and _context.app_name():
            # Inside one of the app's containers: calls go through the agent.
            from burst.client import ContainerClient

            return ContainerClient(_context.platform), _context.app_name()
        if self._client is None or self._deployed_name is None:
            raise InvalidError(
                f"app {self.name!r} is not running: call .remote() inside `burst run`, inside "
                "`with app.run():`, or deploy the app and use burst.Function.from_name()")
        return self._client, self._deployed_name

    def _source_root(self) -> Path:
        for fn in self.registered_functions.values():
            mod = sys.modules.get(fn.raw_f.__module__)
            f = getattr(mod, "__file__", None)
            if f:
                return Path(f).resolve().parent
        raise InvalidError(f"app {self.name!r}: cannot find the source file of its functions")

    def deploy(self, name: str | None = None, *, client: Client | None = None,
               ephemeral: bool = False, client_id: str = "",
               _serve: bool = False, strategy: str = "rolling") -> wire.DeployResponse:
        """Upload the app's source bundle and deploy it; returns the deployment.

        Deploying a new version of a running app sends new calls to the new code; with
        ``strategy="rolling"`` (the default) the old version's containers finish the calls
        they run and stop, with ``"recreate"`` they stop at once (their calls run again on
        the new version).

        With ``ephemeral`` it is a run of the app (what ``app.run()`` makes): it gets an id
        of its own (``DeployResponse.app``), lives while ``client_id`` heartbeats (or, with
        none, until ``burst app stop``), and ``Function.from_name`` never finds it.
        """
        from burst.client import Client

        app_name = name or self.name
        if app_name is None:
            raise InvalidError("the app has no name: use burst.App('name') or pass name=")
        if not self.registered_functions:
            raise InvalidError(f"app {app_name!r} has no functions to deploy")
        from burst import _bundle

        try:
            wire.check_strategy(strategy)
        except ValueError as e:
            raise InvalidError(str(e)) from None
        client = client or Client.from_profile()
        bundle = _bundle.build(self._source_root())
        if not client.has_bundle(bundle.hash):
            client.put_bundle(bundle.hash, bundle.data)
        resp = client.deploy(wire.DeployRequest(
            app=app_name, bundle_hash=bundle.hash,
            functions=[_with_local_files(_with_secrets(f), client)
                       for f in self.registered_functions.values()],
            ephemeral=ephemeral or _serve,
            client_id=client_id, serve=_serve, strategy=strategy))
        # Calls go to the app's id: its name when deployed, the run's own id when ephemeral.
        self._client, self._deployed_name = client, resp.app
        for fn in self.registered_functions.values():
            fn._web_urls = {ep.name: resp.web_urls[ep.name] for ep in fn.spec.web
                            if ep.name in resp.web_urls}
        for warning in resp.warnings:  # e.g. a GPU request no agent of the cluster can hold
            print(f"Warning: {warning}", file=sys.stderr, flush=True)
        return resp

    @property
    def app_id(self) -> str | None:
        """The running app's id (``ap-...`` for a run), or None when it is not running."""
        return self._deployed_name

    @contextlib.contextmanager
    def run(self, *, client: Client | None = None, show_output: bool | None = None,
            detach: bool = False) -> Iterator[App]:
        """Run an ephemeral copy of the app for the duration of the block.

        The run has an id of its own (``app.app_id``) and carries the app's name for
        metering, budgets and ``burst app list``; several runs of an app may be live at
        once, beside its deployment. It lives as long as this process heartbeats: if the
        process dies or loses the cluster, the cluster stops it (its queued calls
        cancelled, its containers stopped) once the heartbeats have been missing for the
        cluster's client timeout (10 s by default). With ``detach`` it keeps running after
        the block (and the process) ends, until ``burst app stop <app id>``. Its functions'
        schedules fire while it runs.

        Remote output (and image builds) are printed, tagged with the function's name,
        inside ``burst.enable_output()`` (``burst run`` enables it unless ``-q``), or with
        ``show_output=True``.
        """
        from burst import _heartbeat
        from burst._logs import LogFollower
        from burst.client import Client
        from burst.output import output_enabled

        client = client or Client.from_profile()
        if show_output is None:
            show_output = output_enabled()
        base = (self.name or "app")[:63]
        with _heartbeat.held(client) as client_id:
            resp = self.deploy(base, client=client, ephemeral=True,
                               client_id="" if detach else client_id)
            app_id = resp.app
            if show_output:
                self._follower = LogFollower(client, app_id)
                self._follower.start()
                self._follower.subscribed.wait(10)
            try:
                yield self
            finally:
                if self._follower is not None:
                    self._follower.stop()
                    self._follower = None
                if not detach:
                    with contextlib.suppress(Exception):
                        client.remove_app(app_id)
                self._client, self._deployed_name = None, None
