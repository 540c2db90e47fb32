from __future__ import annotations

from pathlib import Path

import pytest

from burst_billing import prices
from burst_core import ledger
from burst_core.schemas import MeteringRecord, Resources


def _rec(seconds: float, *, cpu: float = 1.0, memory_mb: int = 2048, gpu: str | None = None,
         gpus: int = 0, spot: bool = False) -> MeteringRecord:
    return MeteringRecord(
        container_id="c1", interval=0, start=100.0, end=100.0 + seconds, workspace="acme",
        app="shop", function="f", agent_id="a1", spot=spot,
        resources=Resources(cpu=cpu, memory_mb=memory_mb, gpu_type=gpu, gpu_count=gpus))


def test_no_table_gives_the_seed_rates() -> None:
    r = prices.load("")
    assert r.cpu_core_second == 0.000013 and r.spot_factor == 0.5
    assert r.gpu_second["H100"] == 0.00120 and r.gpu_second["B200"] == 0.00178
    assert r.memory_gib_second == 0.0


def test_table_prices_cpu_memory_and_gpus_at_the_spot_rate(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text("""
cpu_core_second = 0.00002
memory_gib_second = 0.000003
spot_factor = 0.25
[gpu_second]
h100 = 0.002
MI300X = 0.0015
""")
    r = prices.load(str(path))
    assert r.gpu_second["H100"] == 0.002 and r.gpu_second["MI300X"] == 0.0015
    assert r.gpu_second["A10G"] == 0.00032  # untouched types keep the seed's rate
    on = ledger.cost_parts(_rec(10, cpu=2, memory_mb=2048, gpu="H100", gpus=2), r)
    assert on == pytest.approx((10 * 2 * 0.00002, 10 * 2 * 0.000003, 10 * 2 * 0.002))
    spot = ledger.cost_parts(_rec(10, cpu=2, memory_mb=2048, gpu="H100", gpus=2, spot=True), r)
    assert spot[2] == pytest.approx(on[2] * 0.25) and spot[:2] == on[:2]


@pytest.mark.parametrize(("text", "named"), [
    ("cpu_core_secnd = 1.0", "cpu_core_secnd"),
    ("cpu_core_second = -1", "cpu_core_second"),
    ("cpu_core_second = 'cheap'", "cpu_core_second"),
    ("spot_factor = 2.0", "spot_factor"),
    ("[gpu_second]\nH100 = -0.1", "gpu_second.H100"),
    ("gpu_second = 3", "gpu_second"),
    ("cpu_core_second = ", "not valid TOML"),
])
def test_bad_table_is_refused_naming_the_key(tmp_path: Path, text: str, named: str) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(text)
    with pytest.raises(prices.PriceTableError) as e:
        prices.load(str(path))
    assert named in str(e.value) and str(path) in str(e.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(prices.PriceTableError, match="nope.toml"):
        prices.load(str(tmp_path / "nope.toml"))
