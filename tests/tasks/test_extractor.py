"""fm_network's public feature extractors (tasks/models/extractor.py): public data only."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from tasks.data.bounds import PUBLIC_BOUNDS, PublicBounds, pixel_bounds, register_public_bounds
from tasks.data.registry import DATASETS, DataBundle, DatasetSpec, load_dataset, register_dataset
from tasks.models import ModelSpec, build_model, get_weights
from tasks.models.extractor import (
    PublicConvFeatures,
    public_extractor_state,
    train_public_extractor,
)
from tasks.models.functional import FunctionalModel, PublicTanhFeatures

SHAPE = (1, 12, 12)


def _images(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, 3, n)
    x = rng.random((n, *SHAPE)).astype(np.float32) * 0.2
    for k in range(3):  # one bright band per class: learnable from the public records
        x[y == k, 0, 4 * k : 4 * k + 4, :] += 0.8
    return x, y


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch, tmp_path) -> Iterator[str]:
    """A registered image dataset with declared public records, and a private cache dir."""
    monkeypatch.setenv("FEDPRIV_CACHE", str(tmp_path))
    rng = np.random.default_rng(0)
    xt, yt = _images(rng, 60)
    xp, yp = _images(rng, 300)

    @register_dataset("tiny_public")
    def _tiny(spec: DatasetSpec) -> DataBundle:
        return DataBundle("tiny_public", xt, yt, xt, yt, SHAPE, 3, x_public=xp, y_public=yp)

    register_public_bounds("tiny_public", PublicBounds(pixel_bounds(144)))
    load_dataset.cache_clear()
    yield "tiny_public"
    DATASETS.pop("tiny_public")
    PUBLIC_BOUNDS.pop("tiny_public")
    load_dataset.cache_clear()


def test_features_lie_in_the_unit_ball_and_match_the_torch_map() -> None:
    rng = np.random.default_rng(1)
    x, y = _images(rng, 200)
    state = train_public_extractor(x, y, 3, 4)
    assert not any(k.startswith("out.") for k in state)  # the classifier stays behind
    ext = PublicConvFeatures(state, SHAPE)
    feats = ext.features(x)
    assert feats.shape == (200, 5) and ext.dim == 5
    assert np.linalg.norm(feats, axis=1).max() <= 1.0
    np.testing.assert_allclose(feats[:, -1], 1 / np.sqrt(5), rtol=1e-6)  # intercept
    torch_feats = ext(torch.as_tensor(x)).detach().numpy()
    np.testing.assert_allclose(torch_feats, feats, atol=1e-5)
    # whatever weights a server sends, the client's rows stay in the ball
    wild = {k: 1e3 * v for k, v in state.items()}
    assert np.linalg.norm(PublicConvFeatures(wild, SHAPE).features(x), axis=1).max() <= 1.0
    with pytest.raises(ValueError, match=r"takes records of shape \(1, 12, 12\), got \(1, 8, 8\)"):
        ext(torch.zeros(2, 1, 8, 8))


def test_fm_network_uses_the_public_cnn_when_the_dataset_declares_public_records(tiny) -> None:
    spec = ModelSpec("fm_network", SHAPE, 3, 4, tiny)
    model = build_model(spec, seed=1)
    assert isinstance(model, FunctionalModel) and model.extractor is not None
    assert model.objective_kind == "softmax" and model.head.weight.shape == (3, 5)
    # the extractor's weights are buffers: sent with the model, never trained
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["head.weight"]
    assert "extractor.fc_weight" in get_weights(model)
    # trained once, cached: a second build (another seed, another process) gets the same
    again = build_model(spec, seed=2)
    assert again.extractor is not None
    torch.testing.assert_close(again.extractor.fc_weight, model.extractor.fc_weight)
    # the public CNN separates the public classes; the private records are never read
    x = load_dataset(DatasetSpec(tiny)).x_public
    y = load_dataset(DatasetSpec(tiny)).y_public
    feats = model.fm_features(x)
    w = np.linalg.lstsq(feats, np.eye(3)[y], rcond=None)[0]
    assert ((feats @ w).argmax(1) == y).mean() > 0.9


def test_datasets_without_public_records_fall_back_to_a_random_layer() -> None:
    assert public_extractor_state("digits", 8) is None
    model = build_model(ModelSpec("fm_network", (1, 8, 8), 10, 8, "digits"), seed=0)
    assert model.extractor is None and isinstance(model.hidden, PublicTanhFeatures)
    assert model.head.weight.shape == (10, 9)


def test_records_the_extractor_cannot_take_name_the_dataset_and_the_model(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    monkeypatch.setenv("FEDPRIV_CACHE", str(tmp_path))
    x = np.zeros((10, 7), np.float32)
    y = np.zeros(10, np.int64)

    @register_dataset("flat_public")
    def _flat(spec: DatasetSpec) -> DataBundle:
        return DataBundle("flat_public", x, y, x, y, (7,), 2, x_public=x, y_public=y)

    load_dataset.cache_clear()
    try:
        with pytest.raises(
            ValueError, match=r"model.name='fm_network'.*dataset.name='flat_public'"
        ):
            public_extractor_state("flat_public", 4)
    finally:
        DATASETS.pop("flat_public")
        load_dataset.cache_clear()
