from __future__ import annotations

import random
from decimal import Decimal

import pytest

from burst_core import ledger
from burst_core.schemas import (
    LedgerSnapshot,
    LedgerSnapshotDecoder,
    MeteringRecord,
    Resources,
    encode,
)

T0 = 1_760_000_000.0


def rec(
    container: str = "c1",
    interval: int = 0,
    seconds: float = 5.0,
    *,
    ws: str = "acme",
    app: str = "shop",
    fn: str = "resize",
    cpu: float = 1.0,
    gpu: str | None = None,
    gpus: int = 0,
    spot: bool = False,
    final: bool = False,
    start: float | None = None,
) -> MeteringRecord:
    s = T0 + interval * 5.0 if start is None else start
    return MeteringRecord(
        container_id=container, interval=interval, start=s, end=s + seconds, workspace=ws,
        app=app, function=fn, agent_id="a1",
        resources=Resources(cpu=cpu, gpu_type=gpu, gpu_count=gpus), spot=spot, final=final,
    )


def fold(records: list[MeteringRecord], snap: LedgerSnapshot | None = None) -> LedgerSnapshot:
    snap = snap or LedgerSnapshot()
    for r in records:
        ledger.apply(snap, snap.seq + 1, r, ledger.Rates())
    return snap


# ---- prices -----------------------------------------------------------------------------
def test_cpu_cost_is_core_seconds_times_rate() -> None:
    assert ledger.record_cost(rec(seconds=10, cpu=2), ledger.Rates()) == pytest.approx(
        10 * 2 * 0.000013
    )
    assert ledger.record_cost(rec(seconds=10, cpu=0.125), ledger.Rates()) == pytest.approx(
        10 * 0.125 * 0.000013
    )


@pytest.mark.parametrize(
    ("gpu", "rate"), [("A10G", 0.00032), ("a100-40gb", 0.00068), ("H100", 0.00120),
                      ("B200", 0.00178), ("A100", 0.00068)],
)
def test_gpu_seconds_at_the_seed_rate_per_type(gpu: str, rate: float) -> None:
    r = rec(seconds=4, cpu=1, gpu=gpu, gpus=2)
    assert ledger.record_cost(r, ledger.Rates()) == pytest.approx(4 * 0.000013 + 4 * 2 * rate)


def test_default_gpu_table_is_ordered_by_capability() -> None:
    g = ledger.Rates().gpu_second
    assert g["T4"] < g["L4"] < g["A10G"] < g["L40S"] < g["A100-40GB"]
    assert g["A100-40GB"] < g["A100-80GB"] < g["H100"] < g["H200"] < g["B200"]


def test_spot_halves_the_gpu_part_only() -> None:
    on = ledger.record_cost(rec(seconds=10, cpu=1, gpu="H100", gpus=1), ledger.Rates())
    spot = ledger.record_cost(rec(seconds=10, cpu=1, gpu="H100", gpus=1, spot=True),
                              ledger.Rates())
    cpu = 10 * 0.000013
    assert spot - cpu == pytest.approx((on - cpu) * 0.5)


def test_unknown_gpu_is_billed_at_the_highest_rate() -> None:
    r = ledger.Rates()
    assert r.gpu_rate("MI300X") == max(r.gpu_second.values()) > 0


def test_negative_interval_costs_nothing() -> None:
    r = rec(seconds=-3.0)
    assert ledger.record_seconds(r) == 0.0 and ledger.record_cost(r, ledger.Rates()) == 0.0


@pytest.mark.parametrize("kw", [{"spot_factor": 1.5}, {"cpu_core_second": -1.0},
                                {"gpu_second": {"T4": -0.1}}, {"gpu_second": {}}])
def test_rates_validate_with_the_bad_value_named(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError) as e:
        ledger.Rates(**kw)  # type: ignore[arg-type]
    assert next(iter(kw)) in str(e.value)


# ---- folding and dedupe -----------------------------------------------------------------
def test_fold_adds_seconds_cost_and_records_per_function() -> None:
    snap = fold([rec("c1", 0, 5), rec("c1", 1, 5), rec("c2", 0, 3, fn="thumb")])
    a = snap.lines["acme.shop.resize"]
    b = snap.lines["acme.shop.thumb"]
    assert (a.seconds, a.records) == (10.0, 2) and (b.seconds, b.records) == (3.0, 1)
    assert a.cost == pytest.approx(10 * 0.000013)


def test_duplicate_record_changes_nothing() -> None:
    snap = fold([rec("c1", 0), rec("c1", 1)])
    before = ledger.fingerprint(snap)
    counted = ledger.apply(snap, snap.seq + 1, rec("c1", 0), ledger.Rates())
    assert counted is False
    assert snap.seq == 3  # the position still moves on
    snap.seq = 2
    assert ledger.fingerprint(snap) == before


def test_sequence_already_folded_is_ignored() -> None:
    snap = fold([rec("c1", 0)])
    assert not ledger.apply(snap, 1, rec("c9", 0), ledger.Rates())
    assert "c9" not in snap.seen_through and snap.lines["acme.shop.resize"].records == 1


def test_in_order_intervals_keep_only_a_mark() -> None:
    snap = fold([rec("c1", i) for i in range(100)])
    assert snap.seen == {} and snap.seen_through == {"c1": 99} and snap.closed == {}


def test_out_of_order_intervals_are_listed_until_the_gap_fills() -> None:
    snap = fold([rec("c1", 0), rec("c1", 3), rec("c1", 2)])
    assert snap.seen_through == {"c1": 0} and snap.seen == {"c1": [2, 3]}
    fold([rec("c1", 1)], snap)
    assert snap.seen_through == {"c1": 3} and snap.seen == {}


def test_final_closes_the_container_once_all_intervals_are_in() -> None:
    snap = fold([rec("c1", 0), rec("c1", 2, final=True)])
    assert snap.final_interval == {"c1": 2} and "c1" not in snap.closed
    fold([rec("c1", 1)], snap)
    assert snap.closed == {"c1": 2}
    assert snap.seen == {} and snap.seen_through == {} and snap.final_interval == {}
    assert snap.lines["acme.shop.resize"].records == 3


def test_compacted_container_still_counts_redeliveries_zero() -> None:
    snap = fold([rec("c1", i, final=(i == 4)) for i in (4, 2, 0, 3, 1)])
    assert snap.closed == {"c1": 4}
    line = snap.lines["acme.shop.resize"]
    before = (line.seconds, line.records)
    for i in range(6):  # every old one again, and one past the final
        assert not ledger.apply(snap, snap.seq + 1, rec("c1", i), ledger.Rates())
    line = snap.lines["acme.shop.resize"]
    assert (line.seconds, line.records) == before == (25.0, 5)


def test_nothing_after_a_final_is_counted_even_before_closing() -> None:
    snap = fold([rec("c1", 3, final=True)])
    assert not ledger.apply(snap, snap.seq + 1, rec("c1", 4), ledger.Rates())
    assert ledger.apply(snap, snap.seq + 1, rec("c1", 1), ledger.Rates())


def test_snapshot_of_older_writer_listing_every_interval_still_dedupes() -> None:
    old = LedgerSnapshot(seen={"c1": [0, 1, 2]})  # as written before seen_through existed
    assert not ledger.apply(old, 1, rec("c1", 1), ledger.Rates())
    assert ledger.apply(old, 2, rec("c1", 3), ledger.Rates())
    assert old.seen_through == {"c1": 3} and old.seen == {}


def test_seen_memory_stays_bounded_over_many_containers() -> None:
    rng = random.Random(7)
    records = [rec(f"c{c}", i, final=(i == 9)) for c in range(200) for i in range(10)]
    rng.shuffle(records)
    snap = fold(records)
    assert snap.seen == {} and snap.seen_through == {} and snap.final_interval == {}
    assert len(snap.closed) == 200 and set(snap.closed.values()) == {9}


def test_totals_equal_the_sum_of_records_to_the_cent() -> None:
    rng = random.Random(42)
    gpus = [None, "T4", "A10G", "A100-80GB", "H100", "B200"]
    records = []
    for c in range(300):
        gpu = rng.choice(gpus)
        for i in range(rng.randint(1, 40)):
            start = T0 + rng.uniform(0, 1e6)
            records.append(rec(
                f"c{c}", i, rng.uniform(0.001, 30.0), start=start, cpu=rng.choice([0.125, 1, 8]),
                gpu=gpu, gpus=rng.randint(1, 8) if gpu else 0, spot=rng.random() < 0.3,
                fn=f"f{c % 7}",
            ))
    snap = fold(records + records[::3])  # with a third of them delivered twice
    rates = ledger.Rates()
    # Reference: exact decimal arithmetic from the raw rates, record by record.
    expected = Decimal(0)
    for r in records:
        seconds = Decimal(r.end) - Decimal(r.start)
        res = r.resources
        cost = seconds * Decimal(res.cpu) * Decimal(str(rates.cpu_core_second))
        if res.gpu_count:
            per_gpu = Decimal(str(ledger.DEFAULT_GPU_SECOND[res.gpu_type or ""]))
            gpu_cost = seconds * res.gpu_count * per_gpu
            cost += gpu_cost * Decimal("0.5") if r.spot else gpu_cost
        expected += cost
    total = ledger.workspace_total(snap, "acme")
    assert total["records"] == len(records)
    assert abs(Decimal(total["cost"]) - expected) < Decimal("0.000001")
    assert round(Decimal(total["cost"]), 2) == round(expected, 2)
    assert float(expected) > 100  # large enough for float drift to matter if it existed


def test_snapshot_round_trips_exactly() -> None:
    snap = fold([rec("c1", 0, 1.1), rec("c1", 2, 0.7, gpu="H100", gpus=1), rec("c2", 0, 3.3)])
    again = LedgerSnapshotDecoder.decode(encode(snap))
    assert ledger.fingerprint(again) == ledger.fingerprint(snap)


# ---- reports ----------------------------------------------------------------------------
def test_report_covers_one_workspace_only() -> None:
    snap = fold([
        rec("c1", 0, 5, ws="acme", app="shop", fn="resize"),
        rec("c2", 0, 7, ws="acme", app="api", fn="serve"),
        rec("c3", 0, 11, ws="rival", app="shop", fn="resize"),
    ])
    rows = ledger.report(snap, "acme")
    assert [r["app"] for r in rows] == ["api", "shop"]
    assert [r["seconds"] for r in rows] == [7.0, 5.0]
    assert ledger.report(snap, "rival")[0]["seconds"] == 11.0
    assert ledger.report(snap, "nobody") == []


def test_report_by_function_and_by_app_agree() -> None:
    snap = fold([rec("c1", 0, 5, fn="b"), rec("c2", 0, 2, fn="a"), rec("c3", 0, 4, app="z")])
    by_fn = ledger.report(snap, "acme", by="function")
    assert [(r["app"], r["function"]) for r in by_fn] == [("shop", "a"), ("shop", "b"),
                                                          ("z", "resize")]
    by_app = ledger.report(snap, "acme", by="app")
    assert by_app[0]["seconds"] == 7.0 and by_app[0]["records"] == 2
    assert "function" not in by_app[0]
    assert sum(r["cost"] for r in by_app) == pytest.approx(sum(r["cost"] for r in by_fn))


def test_report_rejects_unknown_grouping() -> None:
    with pytest.raises(ValueError, match="by='agent'"):
        ledger.report(LedgerSnapshot(), "acme", by="agent")  # type: ignore[arg-type]


# ---- days, resources, horizon, lost agents ----------------------------------------------
DAY = 86400.0


def fold_at(records: list[tuple[float, MeteringRecord]], rates: ledger.Rates | None = None,
            horizon: float = ledger.DEDUPE_HORIZON) -> LedgerSnapshot:
    snap = LedgerSnapshot()
    for at, r in records:
        ledger.apply(snap, snap.seq + 1, r, rates or ledger.Rates(), at, horizon)
    return snap


def test_report_by_day_resource_and_since_sum_to_the_totals() -> None:
    rates = ledger.Rates(memory_gib_second=0.000002)
    t1 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    recs = [(t1 + 10, rec("c1", 0, 10, start=t1, cpu=2)),
            (t1 + DAY + 10, rec("c2", 0, 10, start=t1 + DAY, gpu="H100", gpus=2, fn="gen")),
            (t1 + DAY + 20, rec("c2", 1, 10, start=t1 + DAY + 10, gpu="H100", gpus=2, fn="gen",
                                spot=True)),
            (t1 + DAY + 30, rec("c9", 0, 10, start=t1 + DAY, ws="rival", gpu="B200", gpus=1))]
    snap = fold_at(recs, rates)
    total = ledger.workspace_total(snap, "acme")
    by_day = ledger.report(snap, "acme", by="day")
    assert [r["day"] for r in by_day] == ["2026-01-01", "2026-01-02"]
    assert sum(r["cost"] for r in by_day) == pytest.approx(total["cost"], abs=1e-12)
    by_res = {r["resource"]: r for r in ledger.report(snap, "acme", by="resource")}
    assert set(by_res) == {"cpu", "memory", "gpu:H100"}  # never the rival's B200
    assert by_res["gpu:H100"]["quantity"] == pytest.approx(40.0)
    assert by_res["gpu:H100"]["cost"] == pytest.approx(20 * 0.0012 + 20 * 0.0012 * 0.5)
    assert by_res["cpu"]["quantity"] == pytest.approx(20 + 2 * 10 * 0.125 * 8)
    assert by_res["memory"]["quantity"] == pytest.approx(30 * 0.125)
    assert sum(r["cost"] for r in by_res.values()) == pytest.approx(total["cost"], abs=1e-12)
    since = ledger.report(snap, "acme", by="function", since="2026-01-02")
    assert [(r["function"], r["records"]) for r in since] == [("gen", 2)]
    assert ledger.workspace_total(snap, "acme", since="2026-01-02")["records"] == 2
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        ledger.report(snap, "acme", since="yesterday")


def test_marks_are_pruned_a_horizon_later_and_late_records_refused() -> None:
    h = 1000.0
    recs = [(T0 + 5, rec("c1", 0, start=T0)), (T0 + 10, rec("c1", 1, start=T0 + 5, final=True)),
            (T0 + 10, rec("c2", 0, start=T0))]  # c2 never sends a final
    snap = fold_at(recs, horizon=h)
    assert snap.closed == {"c1": 1} and set(snap.open) == {"c2"}
    for i in range(30):  # an hour of another container's records
        at = T0 + 100 + i * 100
        ledger.apply(snap, snap.seq + 1, rec("c3", i, start=at - 5), ledger.Rates(), at, h)
    assert "c1" not in snap.closed and "c1" not in snap.closed_at
    assert "c2" not in snap.open and "c2" not in snap.seen_through
    before = snap.lines["acme.shop.resize"].records
    # c1's record again, long after: refused as late, and recorded as such.
    assert not ledger.apply(snap, snap.seq + 1, rec("c1", 0, start=T0), ledger.Rates(),
                            T0 + 3200, h)
    assert snap.late_records == 1 and snap.lines["acme.shop.resize"].records == before


def test_replay_with_stream_times_is_identical_and_bounded() -> None:
    rng = random.Random(3)
    recs = []
    at = T0
    for c in range(400):
        for i in range(5):
            at += rng.uniform(1, 60)
            recs.append((at, rec(f"c{c}", i, start=at - 5, final=i == 4)))
    recs += [(at + 1 + k, r) for k, (_, r) in enumerate(recs[::7])]  # redeliveries
    a = fold_at(recs, horizon=3600)
    b = fold_at(recs, horizon=3600)
    assert ledger.fingerprint(a) == ledger.fingerprint(b)
    assert a.lines["acme.shop.resize"].records == 2000
    assert len(a.closed) < 400  # only the last horizon's containers keep a marker
    assert len(encode(a)) < 64 * 1024


def test_lost_agent_closes_its_containers_at_the_last_heartbeat() -> None:
    from burst_core.schemas import AgentLost

    snap = fold_at([(T0 + 5, rec("c1", 0, start=T0, cpu=1)),
                    (T0 + 10, rec("c1", 1, start=T0 + 5, cpu=1)),
                    (T0 + 10, rec("c2", 0, start=T0 + 5, fn="other", final=True))])
    lost = AgentLost(agent_id="a1", last_heartbeat_at=T0 + 13, lost_at=T0 + 20,
                     container_ids=["c1", "c2", "never-metered"])
    assert ledger.apply_lost(snap, snap.seq + 1, lost, ledger.Rates(), T0 + 21) == 1
    line = snap.lines["acme.shop.resize"]
    assert line.seconds == pytest.approx(13.0) and line.records == 2
    assert line.lost_billed_seconds == pytest.approx(3.0)
    assert line.lost_unaccounted_seconds == pytest.approx(7.0) and line.lost_containers == 1
    assert "c1" in snap.closed and not snap.open
    # The same event again, and a late record of the closed container: nothing changes.
    before = ledger.fingerprint(snap)
    assert ledger.apply_lost(snap, snap.seq + 1, lost, ledger.Rates(), T0 + 22) == 0
    assert not ledger.apply(snap, snap.seq + 1, rec("c1", 2, start=T0 + 10), ledger.Rates(),
                            T0 + 23)
    snap.seq -= 2
    snap.clock = T0 + 21
    assert ledger.fingerprint(snap) == before
    total = ledger.workspace_total(snap, "acme")
    assert total["lost_unaccounted_seconds"] == pytest.approx(7.0)
