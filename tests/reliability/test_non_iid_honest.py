"""Honest non-IID clients (Dirichlet alpha 0.3) are not mistaken for unreliable ones.

Real local training on the digits data set, partitioned by the project's own partitioners, a
few FedAvg rounds; Gaussian noise is added to every released update at about twice the
update's own norm, as DP-SGD releases are mostly noise. For every scorer configuration we
compare the weights it gives with FedAvg's (example counts): under Dirichlet(0.3) the
clients' mean weight ratio, and the share of clients excluded, stay close to the IID case.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from protocol.settings import RunSettings
from reliability import ReliabilityWeighting, RoundInput, make_scorer
from tasks.data import load_client_data, load_dataset, specs_from_settings
from tasks.models import ModelSpec, build_model, get_weights, set_weights
from tasks.training import make_loader, train_epochs

N_CLIENTS, ROUNDS, NOISE = 10, 3, 2.0

CONFIGS = {
    # name: (scorer, weighting parameters, largest share of honest Dirichlet clients excluded)
    "median_agreement": ("median_agreement", {}, 0.0),
    "fltrust": ("fltrust", {}, 0.3),
    "fltrust_exclude": ("fltrust", {"relative_threshold": 0.5, "by_reputation": False}, 0.5),
    "fltrust_default": ("fltrust", {"relative_threshold": 0.25, "by_reputation": False}, 0.35),
    "output_agreement": ("output_agreement", {}, 0.5),
}
"""Measured here (10 clients, 3 rounds): under IID no configuration excludes anybody; under
Dirichlet(0.3) median agreement excludes nobody, while FLTrust's ReLU gives trust 0 to about a
quarter of the honest clients (updates of one- or two-class clients point away from the
server's IID root update: a known limitation of direction-based trust), and excluding below half
the median reputation raises that to about 0.43; below a quarter (``conf/aggregation/fltrust.yaml``)
to 0.30. The bounds keep these figures from getting
worse unnoticed; README's reliability section reports them."""


def _train(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train_epochs(model, make_loader(x, y, 32, gen), opt, 1, torch.device("cpu"))


@functools.cache
def _rounds(partitioner: str) -> tuple[RoundInput, ...]:
    """The released (noised) updates of ``ROUNDS`` FedAvg rounds of honest clients."""
    settings = RunSettings(
        dataset_name="digits",
        model_name="mlp",
        num_clients=N_CLIENTS,
        partitioner=partitioner,
        dirichlet_alpha=0.3,
        seed=1,
    )
    dspec, pspec = specs_from_settings(settings)
    bundle = load_dataset(dspec)
    spec = ModelSpec("mlp", bundle.input_shape, bundle.num_classes, 32)
    data = [load_client_data(dspec, pspec, pid, 0.0) for pid in range(N_CLIENTS)]
    root_x, root_y = bundle.x_test[:100], bundle.y_test[:100]
    rng = np.random.default_rng(0)
    model = build_model(spec, seed=0)
    g = get_weights(model)
    rounds = []
    for rnd in range(1, ROUNDS + 1):
        updates = []
        for pid, d in enumerate(data):
            set_weights(model, g)
            _train(model, d.x_train, d.y_train, seed=100 * rnd + pid)
            delta = {k: v - g[k] for k, v in get_weights(model).items()}
            norm = np.sqrt(sum(float(np.sum(v**2)) for v in delta.values()))
            size = sum(v.size for v in delta.values())
            updates.append(
                {
                    k: (v + rng.normal(0, NOISE * norm / np.sqrt(size), v.shape)).astype(v.dtype)
                    for k, v in delta.items()
                }
            )
        set_weights(model, g)
        _train(model, root_x, root_y, seed=rnd)
        server = {k: v - g[k] for k, v in get_weights(model).items()}
        counts = tuple(len(d.y_train) for d in data)
        rounds.append(RoundInput(rnd, tuple(range(N_CLIENTS)), tuple(updates), counts, server))
        fedavg = np.asarray(counts, dtype=float) / sum(counts)
        g = {k: g[k] + sum(w * u[k] for w, u in zip(fedavg, updates, strict=True)) for k in g}
    return tuple(rounds)


def _weight_ratios(partitioner: str, config: str) -> tuple[float, float]:
    """Mean over rounds and clients of weight / FedAvg weight; share of clients at weight 0."""
    name, params, _ = CONFIGS[config]
    weighting = ReliabilityWeighting(make_scorer(name), decay=0.5, **params)
    ratios, excluded = [], []
    for r in _rounds(partitioner):
        weights, _, _ = weighting(r)
        fedavg = np.asarray(r.num_examples, dtype=float) / sum(r.num_examples)
        ratios.append(weights / fedavg)
        excluded.append(weights == 0)
    return float(np.mean(ratios)), float(np.mean(excluded))


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_dirichlet_honest_clients_keep_about_the_iid_weight(config) -> None:
    iid_ratio, iid_excluded = _weight_ratios("iid", config)
    non_ratio, non_excluded = _weight_ratios("dirichlet", config)
    # FedAvg itself has ratio 1 and excludes nobody
    assert iid_excluded == 0.0, iid_excluded
    assert abs(iid_ratio - 1.0) < 0.05, iid_ratio
    assert abs(non_ratio - iid_ratio) < 0.25, (iid_ratio, non_ratio)
    assert non_excluded <= CONFIGS[config][2], non_excluded
