"""The zygote's CUDA check (burst._shim.zygote.cuda_initialised): the driver library mapped
is not initialisation (importing torch maps it); the driver answering a query that needs
cuInit is. Stand-in drivers are built with the C compiler."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DRIVER = """
int cuDeviceGetCount(int *count) { *count = 1; return %d; }
"""

CHECK = """
import ctypes, sys
ctypes.CDLL(sys.argv[1])  # mapped, as importing torch maps the driver
from burst._shim.zygote import cuda_initialised
print(repr(cuda_initialised()))
"""


def driver(tmp_path: Path, rc: int) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    src = tmp_path / f"driver{rc}.c"
    src.write_text(DRIVER % rc)
    out = tmp_path / f"d{rc}" / "libcuda.so.1"
    out.parent.mkdir()
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(out), str(src)], check=True)
    return out


@pytest.mark.parametrize(("rc", "initialised"), [(3, False), (0, True)])
def test_mapped_is_not_initialised_answered_is(tmp_path: Path, rc: int,
                                               initialised: bool) -> None:
    lib = driver(tmp_path, rc)
    out = subprocess.run([sys.executable, "-c", CHECK, str(lib)], capture_output=True,
                         text=True, check=True).stdout.strip()
    if initialised:
        assert "was initialised" in out and str(lib) in out, out
    else:
        assert out == "''", out
