"""A local cluster for one benchmark: `burst up` in a fresh BURST_HOME, `burst down` after.

    with LocalCluster("burst-bench-", BURST_SCALEDOWN_TICK="0.1") as c:
        ...  # c.home, c.env; os.environ is c.env meanwhile (the SDK finds the cluster)

BURST_* variables of the caller's environment are left out (the benchmark measures a
cluster of its own); the settings given are added. A failed `burst up` ends the run
with its output. With BENCH_KEEP set, the home folder (logs) is kept and named.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from types import ModuleType

BIN = Path(sys.executable).parent
#: The venv's `burst`, or the CLI module where Burst runs from a PYTHONPATH (a lent GPU
#: machine, see bench/gpu_check.sh).
BURST = ([str(BIN / "burst")] if (BIN / "burst").exists()
         else [sys.executable, "-m", "burst.cli.main"])


class LocalCluster:
    def __init__(self, prefix: str, *up_args: str, timeout: float | None = None,
                 **settings: str) -> None:
        self.home = Path(tempfile.mkdtemp(prefix=prefix))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("BURST_")}
        self.env.update(BURST_HOME=str(self.home), BURST_LOG_LEVEL="warning")
        self.env.update(settings)
        self.up_args = up_args
        self.timeout = timeout

    def __enter__(self) -> LocalCluster:
        self._saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(self.env)
        up = subprocess.run([*BURST, "up", *self.up_args], env=self.env,
                            capture_output=True, text=True, timeout=self.timeout)
        if up.returncode != 0:
            self.__exit__()
            sys.exit(f"burst up failed:\n{up.stdout}\n{up.stderr}")
        return self

    def __exit__(self, *_: object) -> None:
        subprocess.run([*BURST, "down"], env=self.env, capture_output=True,
                       text=True)
        os.environ.clear()
        os.environ.update(self._saved)
        if os.environ.get("BENCH_KEEP") is None:
            shutil.rmtree(self.home, ignore_errors=True)
        else:
            print("kept", self.home, file=sys.stderr)


def load_app(workdir: Path, name: str, source: str) -> ModuleType:
    """Write ``source`` (an app, dedented) as module ``name`` in ``workdir`` and import it,
    as `burst run` would load a user's file."""
    (workdir / f"{name}.py").write_text(textwrap.dedent(source))
    sys.path.insert(0, str(workdir))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(workdir))
