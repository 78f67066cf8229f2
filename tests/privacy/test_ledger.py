import json
import math

import pytest
import torch
from opacus import PrivacyEngine
from opacus.accountants import PRVAccountant, RDPAccountant
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


def test_ledger_matches_opacus_accountant() -> None:
    e1, e2 = _opacus_round(0), _opacus_round(1, noise=1.3)
    ledger = PrivacyLedger(delta=DELTA)
    assert ledger.epsilon() == 0.0
    ledger.record(_event(e1, 1))
    assert math.isclose(ledger.epsilon(), e1.accountant.get_epsilon(DELTA), rel_tol=1e-9)
    ledger.record(_event(e2, 2))
    ref = RDPAccountant()
    ref.history = list(e1.accountant.history) + list(e2.accountant.history)
    assert math.isclose(ledger.epsilon(), ref.get_epsilon(DELTA), rel_tol=1e-9)
    assert ledger.epsilon() > e1.accountant.get_epsilon(DELTA)


def test_same_mechanism_events_merge_exactly() -> None:
    ledger = PrivacyLedger(
        delta=DELTA, events=[SampledGaussianEvent(1.0, 0.1, 10, r) for r in range(3)]
    )
    ref = RDPAccountant()
    ref.history = [(1.0, 0.1, 10)] * 3
    assert math.isclose(ledger.epsilon(), ref.get_epsilon(DELTA), rel_tol=1e-9)


def test_prv_accountant_via_registry() -> None:
    ev = [SampledGaussianEvent(1.0, 0.05, 40, 1), SampledGaussianEvent(1.5, 0.1, 20, 2)]
    ledger = PrivacyLedger(delta=DELTA, accountant="prv", events=ev)
    ref = PRVAccountant()
    ref.history = [(1.0, 0.05, 40), (1.5, 0.1, 20)]
    assert math.isclose(ledger.epsilon(), ref.get_epsilon(DELTA), rel_tol=1e-9)


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
        accountant="rdp",
        events=[SampledGaussianEvent(1.1234567891234, 0.0123, 17, 1), PureDpEvent(0.1, 2)],
    )
    ledger.save(path)
    data = json.loads(path.read_text())
    assert data["version"] == 1
    assert data["accountant"] == "rdp" and data["delta"] == DELTA
    assert [e["kind"] for e in data["events"]] == ["sampled_gaussian", "pure_dp"]
    loaded = PrivacyLedger.load(path)
    assert loaded.events == ledger.events
    assert loaded.epsilon() == ledger.epsilon()
    assert [p.name for p in path.parent.iterdir()] == ["ledger.json"]  # no temp files left
    assert PrivacyLedger.from_json(ledger.to_json()).events == ledger.events


def test_load_or_new(tmp_path) -> None:
    path = tmp_path / "ledger.json"
    fresh = PrivacyLedger.load_or_new(path, DELTA, "rdp")
    assert fresh.events == () and not path.exists()
    fresh.record(PureDpEvent(1.0))
    fresh.save(path)
    assert PrivacyLedger.load_or_new(path, DELTA, "rdp").events == fresh.events
    with pytest.raises(ValueError, match=r"delta is 0\.001.*delta 1e-05"):
        PrivacyLedger.load_or_new(path, 1e-3, "rdp")
    with pytest.raises(ValueError, match=r"'prv'.*'rdp'"):
        PrivacyLedger.load_or_new(path, DELTA, "prv")


def test_bad_ledger_inputs() -> None:
    with pytest.raises(ValueError, match=r"privacy\.delta must be in \(0, 1\), got 0"):
        PrivacyLedger(delta=0)
    with pytest.raises(ValueError, match=r"privacy\.accountant .*got 'nope'"):
        PrivacyLedger(delta=DELTA, accountant="nope")
    with pytest.raises(ValueError, match="version must be 1, got 2"):
        PrivacyLedger.from_dict({"version": 2, "delta": DELTA, "accountant": "rdp"})
    with pytest.raises(ValueError, match="kind"):
        PrivacyLedger.from_dict(
            {
                "version": 1,
                "delta": DELTA,
                "accountant": "rdp",
                "events": [{"kind": "laplace", "epsilon": 1.0}],
            }
        )
    with pytest.raises(ValueError, match="noise_multiplier must be > 0, got 0"):
        SampledGaussianEvent(0.0, 0.1, 1)
    with pytest.raises(ValueError, match=r"epsilon must be >= 0, got -1"):
        PureDpEvent(-1.0)


@pytest.mark.filterwarnings("ignore:GDP accounting is experimental")
def test_gdp_rejects_heterogeneous_events() -> None:
    ledger = PrivacyLedger(
        delta=DELTA, accountant="gdp", events=[SampledGaussianEvent(1.0, 0.1, 10, 1)] * 2
    )
    assert ledger.epsilon() > 0
    ledger.record(SampledGaussianEvent(2.0, 0.1, 10, 3))
    with pytest.raises(ValueError, match="'gdp' can only compose"):
        ledger.epsilon()
