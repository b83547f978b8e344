"""What a long shift's truth holds per parcel: a book that does not grow with the shift,
labels dropped once a parcel is off the belt, event notes only for parcels that have one."""

from __future__ import annotations

from pathlib import Path

from controller.app.simulate import ShiftResult, run_shift
from controller.clock import VirtualClock, run_virtual
from controller.config import load_config
from controller.orders import OrderStatus
from sim_hardware.scenario import DEMO_MIX, ScenarioSpec, generate

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "deploy" / "line.example.toml"


def test_the_order_book_is_filled_up_with_earlier_orders_no_parcel_carries() -> None:
    line = load_config(CONFIG)
    spec = ScenarioSpec(parcels=50, seed=9, mix=DEMO_MIX, order_book=400)
    parcels, orders = generate(spec, line)
    plain_parcels, plain_orders = generate(spec.model_copy(update={"order_book": 0}), line)
    assert len(orders) == 400
    assert orders[:len(plain_orders)] == plain_orders  # the shift itself is the same
    assert [p.code for p in parcels] == [p.code for p in plain_parcels]
    earlier = orders[len(plain_orders):]
    assert len({o.code for o in orders}) == len(orders)  # one order per code
    assert {o.code for o in earlier}.isdisjoint({p.code for p in parcels})
    assert all(o.status is OrderStatus.RELEASED for o in earlier)
    shift_start = min(o.created_at for o in plain_orders)
    assert max(o.created_at for o in earlier) < shift_start
    big = ScenarioSpec(parcels=50, seed=9, mix=DEMO_MIX, order_book=10)
    assert len(generate(big, line)[1]) == len(plain_orders)  # never fewer than the parcels'


def test_a_parcel_off_the_belt_keeps_its_truth_but_not_its_labels(tmp_path: Path) -> None:
    config = load_config(CONFIG)
    spec = ScenarioSpec(parcels=40, seed=4, mix=DEMO_MIX)

    async def shift(clock: VirtualClock) -> ShiftResult:
        return await run_shift(config, spec, tmp_path, clock, frames="truth")

    result = run_virtual(shift)
    assert all(p.actual is not None for p in result.truth)
    assert all(p.labels == () for p in result.truth)
    fired_at = {f.pushed for f in result.fires if f.pushed is not None}
    assert fired_at  # some were pushed, and their notes say so
    for parcel in result.truth:
        assert (parcel.sim_id in fired_at) <= bool(parcel.events), parcel
    assert not hasattr(result.truth[0], "__dict__")  # slots: no dict per parcel
