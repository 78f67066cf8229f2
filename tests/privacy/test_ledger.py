import json
import math

import pytest
import torch
from opacus import PrivacyEngine
from pld_reference import reference_epsilon
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from privacy import PrivacyLedger, PureDpEvent, SampledGaussianEvent

DELTA = 1e-5


def _opacus_round(seed: int, noise: float = 1.1) -> PrivacyEngine:
    """One federated round trained with plain Opacus (its own engine)."""
    torch.manual_seed(seed)
    x, y = torch.randn(40, 4), torch.randint(0, 2, (40,))
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    engine = PrivacyEngine(accountant="rdp")
    model, opt, loader = engine.make_private(
        module=model,
        optimizer=opt,
        data_loader=loader,
        noise_multiplier=noise,
        max_grad_norm=1.0,
        poisson_sampling=True,
    )
    for xb, yb in loader:
        opt.zero_grad()
        nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()
    return engine


def _event(engine: PrivacyEngine, rnd: int) -> SampledGaussianEvent:
    ((nm, q, steps),) = engine.accountant.history
    return SampledGaussianEvent(noise_multiplier=nm, sample_rate=q, steps=steps, round=rnd)


def _close_above(got: float, ref: float) -> None:
    """The ledger's pessimistic PLD is an upper bound, within 0.1% of the finer reference."""
    assert ref <= got <= ref * (1 + 1e-3), (got, ref)


def test_ledger_is_at_least_the_independent_pld_epsilon() -> None:
    e1, e2 = _opacus_round(0), _opacus_round(1, noise=1.3)
    ledger = PrivacyLedger(delta=DELTA)
    assert ledger.epsilon() == 0.0 and ledger.accountant == "pld"
    ledger.record(_event(e1, 1))
    _close_above(ledger.epsilon(), reference_epsilon(list(e1.accountant.history), DELTA))
    one = ledger.epsilon()
    ledger.record(_event(e2, 2))
    history = list(e1.accountant.history) + list(e2.accountant.history)
    _close_above(ledger.epsilon(), reference_epsilon(history, DELTA))
    assert ledger.epsilon() > one


def test_same_mechanism_events_merge_exactly() -> None:
    ledger = PrivacyLedger(
        delta=DELTA, events=[SampledGaussianEvent(1.0, 0.1, 10, r) for r in range(3)]
    )
    _close_above(ledger.epsilon(), reference_epsilon([(1.0, 0.1, 10)] * 3, DELTA))


def test_replace_one_is_the_stated_relation_and_costs_more_than_add_remove() -> None:
    import dp_accounting as dpa
    from dp_accounting.pld import pld_privacy_accountant

    ledger = PrivacyLedger(delta=DELTA, events=[SampledGaussianEvent(1.029, 1 / 13, 39, 1)])
    assert ledger.relation == "replace_one" and ledger.to_dict()["neighbouring"] == "replace_one"
    acc = pld_privacy_accountant.PLDAccountant(dpa.NeighboringRelation.ADD_OR_REMOVE_ONE)
    acc.compose(
        dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(1 / 13, dpa.GaussianDpEvent(1.029)), 39)
    )
    add_remove = acc.get_epsilon(DELTA)
    # the brief's measured pair: 3.428 under add/remove, 4.60 under replace-one
    assert add_remove == pytest.approx(3.428, abs=2e-3)
    assert ledger.epsilon() == pytest.approx(4.6005, abs=2e-3)


@pytest.mark.parametrize("name", ["gdp", "rdp", "prv"])
def test_accountants_that_are_not_a_guarantee_here_are_refused(name) -> None:
    with pytest.raises(ValueError, match=rf"privacy\.accountant='{name}' is refused: .*'pld'"):
        PrivacyLedger(delta=DELTA, accountant=name)


def test_epsilon_if_does_not_record() -> None:
    ledger = PrivacyLedger(delta=DELTA, events=[SampledGaussianEvent(1.0, 0.1, 10)])
    before = ledger.epsilon()
    after = ledger.epsilon_if(SampledGaussianEvent(1.0, 0.1, 10, 1))
    assert after > before
    assert len(ledger.events) == 1
    assert ledger.epsilon() == before


def test_pure_dp_composes_additively() -> None:
    sg = SampledGaussianEvent(1.0, 0.1, 20)
    base = PrivacyLedger(delta=DELTA, events=[sg]).epsilon()
    ledger = PrivacyLedger(delta=DELTA, events=[sg, PureDpEvent(0.5, 1), PureDpEvent(0.25, 2)])
    assert math.isclose(ledger.epsilon(), base + 0.75, rel_tol=1e-12)
    assert PrivacyLedger(delta=DELTA, events=[PureDpEvent(0.3)]).epsilon() == pytest.approx(0.3)


def test_save_load_round_trip(tmp_path) -> None:
    path = tmp_path / "sub" / "ledger.json"
    ledger = PrivacyLedger(
        delta=DELTA,
        accountant="pld",
        events=[
            SampledGaussianEvent(1.1234567891234, 0.0123, 17, 1),
            PureDpEvent(0.1, 2, mechanism="evaluation"),
        ],
    )
    ledger.save(path)
    data = json.loads(path.read_text())
    assert data["version"] == 2
    assert data["accountant"] == "pld" and data["delta"] == DELTA
    assert data["events"][1]["mechanism"] == "evaluation"
    assert [e["kind"] for e in data["events"]] == ["sampled_gaussian", "pure_dp"]
    loaded = PrivacyLedger.load(path)
    assert loaded.events == ledger.events
    assert loaded.epsilon() == ledger.epsilon()
    assert [p.name for p in path.parent.iterdir()] == ["ledger.json"]  # no temp files left
    assert PrivacyLedger.from_json(ledger.to_json()).events == ledger.events


def test_load_or_new(tmp_path) -> None:
    path = tmp_path / "ledger.json"
    fresh = PrivacyLedger.load_or_new(path, DELTA, "pld")
    assert fresh.events == () and not path.exists()
    fresh.record(PureDpEvent(1.0))
    fresh.save(path)
    assert PrivacyLedger.load_or_new(path, DELTA, "pld").events == fresh.events
    with pytest.raises(ValueError, match=r"delta is 0\.001.*delta 1e-05"):
        PrivacyLedger.load_or_new(path, 1e-3, "pld")


def test_bad_ledger_inputs() -> None:
    with pytest.raises(ValueError, match=r"privacy\.delta must be in \(0, 1\), got 0"):
        PrivacyLedger(delta=0)
    with pytest.raises(ValueError, match=r"privacy\.accountant .*got 'nope'"):
        PrivacyLedger(delta=DELTA, accountant="nope")
    with pytest.raises(ValueError, match="version must be 2, got 3"):
        PrivacyLedger.from_dict({"version": 3, "delta": DELTA, "accountant": "pld"})
    with pytest.raises(ValueError, match="version is 1: .*add/remove-one"):
        PrivacyLedger.from_dict({"version": 1, "delta": DELTA, "accountant": "rdp"})
    with pytest.raises(ValueError, match="neighbouring must be 'replace_one'"):
        PrivacyLedger.from_dict(
            {"version": 2, "delta": DELTA, "accountant": "pld", "neighbouring": "add_remove"}
        )
    with pytest.raises(ValueError, match="kind"):
        PrivacyLedger.from_dict(
            {
                "version": 2,
                "delta": DELTA,
                "accountant": "pld",
                "events": [{"kind": "laplace", "epsilon": 1.0}],
            }
        )
    with pytest.raises(ValueError, match="noise_multiplier must be > 0, got 0"):
        SampledGaussianEvent(0.0, 0.1, 1)
    with pytest.raises(ValueError, match=r"epsilon must be >= 0, got -1"):
        PureDpEvent(-1.0)
