"""Contract tests over every registered dataset and model (as dp_accounting tests each
accountant with one contract): a plug-in added by one registration is held to the same rules.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus.validators import ModuleValidator

from tasks.data import (
    DATASETS,
    PUBLIC_BOUNDS,
    DatasetSpec,
    is_natural,
    load_dataset,
    public_bounds,
)
from tasks.models import MODELS, ModelSpec, build_model, model_info
from tasks.models.functional import FUNCTIONAL_HEAD, FunctionalModel

ONLINE_ONLY = {"huggingface"}
"""Sources that need the internet (the hub); their offline path is tested in test_tasks."""
USER_FILE = {"table"}
"""Sources that read the user's own file (tested with one in tests/tasks/data/test_table.py)."""
OFFLINE = sorted(set(DATASETS) - ONLINE_ONLY - USER_FILE)


@pytest.mark.parametrize("name", OFFLINE)
def test_every_dataset_keeps_the_bundle_contract(name: str) -> None:
    b = load_dataset(DatasetSpec(name))
    assert b.name == name
    for x, y in ((b.x_train, b.y_train), (b.x_test, b.y_test)):
        assert x.dtype == np.float32 and x.shape[1:] == b.input_shape and len(x) == len(y) > 0
        assert np.isfinite(x).all()
    if b.num_classes == 0:  # regression
        assert b.y_train.dtype == np.float32
    else:
        assert np.issubdtype(b.y_train.dtype, np.integer)
        labels = np.concatenate([b.y_train, b.y_test])
        assert labels.min() >= 0 and labels.max() < b.num_classes
    if name in PUBLIC_BOUNDS:  # declared bounds fit the records' width
        assert len(public_bounds(name).features.names) == int(np.prod(b.input_shape))
    if is_natural(name):  # every row has an owner, every owner has training and test rows
        assert b.owner_train is not None and b.owner_test is not None
        assert len(b.owner_train) == len(b.y_train) and len(b.owner_test) == len(b.y_test)
        assert set(b.owner_train) == set(b.owner_test) == set(range(b.owners))
    else:
        assert b.owner_train is None and b.owner_test is None
    if b.val_train is not None:
        assert b.val_train.dtype == bool and len(b.val_train) == len(b.y_train)


def _build_on_first_fitting(name: str) -> tuple[torch.nn.Module, ModelSpec]:
    """The model on the first offline dataset it can serve (dpcnn needs 14x14 images)."""
    info = model_info(name)
    if info.regression:
        candidates = ["wage"]
    else:
        candidates = ["adult", "digits"] if info.objective else ["digits", "mnist"]
    problems = []
    for dataset in candidates:
        b = load_dataset(DatasetSpec(dataset))
        spec = ModelSpec(name, b.input_shape, b.num_classes, 8, b.name)
        try:
            return build_model(spec, 0), spec
        except ValueError as err:
            problems.append(str(err))
    raise AssertionError(f"model {name!r} serves none of {candidates}: {problems}")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_builds_trains_under_opacus_and_states_its_properties(name: str) -> None:
    info = model_info(name)
    model, spec = _build_on_first_fitting(name)
    b = load_dataset(DatasetSpec(spec.dataset))
    assert ModuleValidator.validate(model, strict=False) == []  # DP-SGD can train it
    again = build_model(spec, 0)  # deterministic from the seed
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key])
    out = model(torch.as_tensor(b.x_train[:5]))
    if info.regression:
        assert out.shape[0] == 5 and out.numel() == 5
    else:
        assert out.shape == (5, b.num_classes)
    assert isinstance(model, FunctionalModel) == bool(info.objective)
    if info.objective:
        assert model.objective_kind == info.objective
        assert FUNCTIONAL_HEAD in model.state_dict()
    # a model refuses data of the other kind (classes vs a number), naming the setting
    other = load_dataset(DatasetSpec("digits" if info.regression else "wage"))
    with pytest.raises(ValueError, match="model.name|dataset.name"):
        build_model(ModelSpec(name, other.input_shape, other.num_classes, 8, other.name))
