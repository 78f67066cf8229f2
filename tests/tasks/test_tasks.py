"""tasks: dataset loaders, partitioning, models and the plain training loops."""

from __future__ import annotations

import io
import os
import pickle

import datasets
import numpy as np
import pytest
import torch
from opacus.validators import ModuleValidator

from tasks.data import (
    DatasetSpec,
    PartitionSpec,
    load_dataset,
    partition_indices,
    split_train_val,
)
from tasks.data.images import _ArraysOnlyUnpickler, bundle_from_hf
from tasks.models import MODELS, ModelSpec, build_model, get_weights, set_weights
from tasks.training import evaluate, make_loader, select_device, train_epochs


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DatasetSpec("digits"))


# ---------------------------------------------------------------------- datasets
def test_digits_bundle(digits) -> None:
    assert digits.x_train.dtype == np.float32
    assert digits.x_train.shape == (1347, 1, 8, 8)
    assert digits.x_test.shape == (450, 1, 8, 8)
    assert len(digits.y_train) == 1347 and len(digits.y_test) == 450
    assert digits.input_shape == (1, 8, 8)
    assert digits.num_classes == 10
    for x in (digits.x_train, digits.x_test):
        assert x.min() >= 0.0 and x.max() <= 1.0
    assert set(np.unique(digits.y_train)) == set(range(10))
    assert set(np.unique(digits.y_test)) == set(range(10))


def test_digits_holdout_depends_on_seed(digits) -> None:
    other = load_dataset(DatasetSpec("digits", seed=1))
    assert other.x_test.shape == digits.x_test.shape
    assert not np.array_equal(other.y_test, digits.y_test) or not np.array_equal(
        other.x_test, digits.x_test
    )


def test_unknown_dataset_names_the_key() -> None:
    with pytest.raises(ValueError, match=r"dataset\.name must be one of"):
        load_dataset(DatasetSpec("no-such-dataset"))


def test_mnist_bundle() -> None:
    b = load_dataset(DatasetSpec("mnist"))
    assert b.x_train.shape == (50000, 1, 28, 28)
    assert b.x_public is not None and b.y_public is not None
    assert b.x_public.shape == (10000, 1, 28, 28) and b.y_public.shape == (10000,)
    assert b.x_test.shape == (10000, 1, 28, 28)
    assert b.y_train.shape == (50000,) and b.y_test.shape == (10000,)
    assert b.input_shape == (1, 28, 28)
    assert b.num_classes == 10
    assert b.x_train.dtype == np.float32
    assert b.y_train.dtype == np.int64
    assert 0.0 <= float(b.x_test.min()) and float(b.x_test.max()) <= 1.0
    assert set(np.unique(b.y_test)) == set(range(10))


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


class _Custom:
    pass


@pytest.mark.parametrize(
    "payload",
    [
        pickle.dumps(os.system, protocol=4),
        pickle.dumps(_Evil(), protocol=4),
        pickle.dumps(_Custom(), protocol=4),
        pickle.dumps([np.arange(3.0), _Custom()], protocol=4),
    ],
    ids=["os.system", "reduce-to-os.system", "custom-class", "array-then-class"],
)
def test_arrays_only_unpickler_refuses_other_globals(payload: bytes) -> None:
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        _ArraysOnlyUnpickler(io.BytesIO(payload)).load()


def test_arrays_only_unpickler_loads_arrays() -> None:
    data = ((np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], dtype=np.int64)),)
    back = _ArraysOnlyUnpickler(io.BytesIO(pickle.dumps(data, protocol=4))).load()
    np.testing.assert_array_equal(back[0][0], data[0][0])
    assert back[0][0].dtype == np.float32
    np.testing.assert_array_equal(back[0][1], data[0][1])


def _hf_split(images: list[np.ndarray], labels: list[int]) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"image": images, "label": labels})


def test_bundle_from_hf_grayscale() -> None:
    rng = np.random.default_rng(0)
    train = _hf_split(
        [rng.integers(0, 256, (28, 28), dtype=np.uint8) for _ in range(6)], [0, 1, 2, 0, 1, 2]
    )
    test = _hf_split([np.full((28, 28), 255, dtype=np.uint8), np.zeros((28, 28), np.uint8)], [4, 0])
    spec = DatasetSpec("huggingface", hf_name="tiny/mnist")
    b = bundle_from_hf(spec, train, test)
    assert b.x_train.shape == (6, 1, 28, 28)
    assert b.x_test.shape == (2, 1, 28, 28)
    assert b.input_shape == (1, 28, 28)
    assert b.x_train.dtype == np.float32 and b.x_test.dtype == np.float32
    assert b.x_train.min() >= 0.0 and b.x_train.max() <= 1.0
    assert b.x_test.max() == pytest.approx(1.0)
    assert b.num_classes == 5  # labels go up to 4 (in the test split)
    assert b.y_train.dtype == np.int64
    np.testing.assert_array_equal(b.y_train, [0, 1, 2, 0, 1, 2])
    assert b.name == "tiny/mnist"
    first = np.asarray(train[0]["image"], dtype=np.float32) / 255.0
    np.testing.assert_allclose(b.x_train[0, 0], first, rtol=1e-6)


def test_bundle_from_hf_rgb_is_channels_first() -> None:
    imgs = [np.full((8, 8, 3), (10, 128, 250), dtype=np.uint8) for _ in range(3)]
    split = _hf_split(imgs, [0, 1, 1])
    b = bundle_from_hf(DatasetSpec("huggingface", hf_name="tiny/rgb"), split, split)
    assert b.x_train.shape == (3, 3, 8, 8)
    assert b.input_shape == (3, 8, 8)
    assert b.num_classes == 2
    np.testing.assert_allclose(b.x_train[0, :, 0, 0], np.array([10, 128, 250]) / 255.0, rtol=1e-6)


# ---------------------------------------------------------------------- partitioning
def _check_disjoint_subset(parts: list[np.ndarray], n: int) -> None:
    union = np.concatenate(parts)
    assert len(union) == len(set(union.tolist())), "partitions overlap"
    assert union.min() >= 0 and union.max() < n
    assert all(len(p) > 0 for p in parts)


@pytest.mark.filterwarnings("ignore:Classes:UserWarning")
@pytest.mark.parametrize("method", ["iid", "dirichlet", "pathological"])
def test_partitions_disjoint_and_deterministic(digits, method: str) -> None:
    y = digits.y_train
    spec = PartitionSpec(method, num_partitions=5, seed=3, alpha=0.3, classes_per_client=2)
    parts = partition_indices(y, spec)
    assert len(parts) == 5
    _check_disjoint_subset(parts, len(y))
    again = partition_indices(y, spec)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


@pytest.mark.parametrize("method", ["iid", "dirichlet"])
def test_partitions_depend_on_seed(digits, method: str) -> None:
    y = digits.y_train
    a = partition_indices(y, PartitionSpec(method, 5, seed=0, alpha=0.3))
    b = partition_indices(y, PartitionSpec(method, 5, seed=1, alpha=0.3))
    assert any(not np.array_equal(p, q) for p, q in zip(a, b, strict=True))


def test_iid_partitions_balanced_and_complete(digits) -> None:
    y = digits.y_train
    parts = partition_indices(y, PartitionSpec("iid", 4, seed=0))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(y)))
    # shuffled, not contiguous shards
    assert parts[0].max() - parts[0].min() > len(parts[0])


@pytest.mark.filterwarnings("ignore:Classes:UserWarning")
def test_pathological_clients_see_at_most_two_labels(digits) -> None:
    y = digits.y_train
    parts = partition_indices(y, PartitionSpec("pathological", 5, seed=0, classes_per_client=2))
    for p in parts:
        assert len(np.unique(y[p])) <= 2


def test_dirichlet_is_skewed(digits) -> None:
    y = digits.y_train
    parts = partition_indices(y, PartitionSpec("dirichlet", 5, seed=0, alpha=0.3))
    shares = [np.bincount(y[p], minlength=10) / len(p) for p in parts]
    assert max(s.max() for s in shares) > 0.2  # iid would give about 0.1 per label


def test_unknown_partitioner_names_the_key() -> None:
    with pytest.raises(ValueError, match=r"federation\.partitioner must be one of"):
        partition_indices(np.zeros(10, dtype=np.int64), PartitionSpec("round-robin", 2))


def test_too_many_partitions_names_num_clients() -> None:
    with pytest.raises(ValueError, match=r"federation\.num_clients"):
        partition_indices(np.zeros(4, dtype=np.int64), PartitionSpec("iid", 5))


# ---------------------------------------------------------------------- train/val split
@pytest.mark.parametrize("val_fraction", [0.0, 0.1, 0.5, 0.99])
def test_split_train_val(val_fraction: float) -> None:
    indices = np.arange(100, 300, 2)
    train, val = split_train_val(indices, val_fraction, seed=1, partition_id=2)
    train2, val2 = split_train_val(indices, val_fraction, seed=1, partition_id=2)
    np.testing.assert_array_equal(train, train2)
    np.testing.assert_array_equal(val, val2)
    assert not set(train.tolist()) & set(val.tolist())
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), indices)
    assert len(train) >= 1
    assert len(val) == min(round(val_fraction * len(indices)), len(indices) - 1)


def test_split_train_val_depends_on_partition_and_seed() -> None:
    indices = np.arange(200)
    base = split_train_val(indices, 0.2, seed=0, partition_id=0)[1]
    assert not np.array_equal(base, split_train_val(indices, 0.2, seed=0, partition_id=1)[1])
    assert not np.array_equal(base, split_train_val(indices, 0.2, seed=1, partition_id=0)[1])


@pytest.mark.parametrize("n", [1, 2])
def test_split_train_val_keeps_one_training_example(n: int) -> None:
    train, val = split_train_val(np.arange(n), 0.9, seed=0, partition_id=0)
    assert len(train) >= 1
    assert len(train) + len(val) == n


# ---------------------------------------------------------------------- models
SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28)}


@pytest.mark.parametrize("shape_name", sorted(SHAPES))
@pytest.mark.parametrize("name", ["softmax", "mlp", "cnn", "cnn1d"])
def test_model_shapes_and_opacus_compatibility(name: str, shape_name: str) -> None:
    shape = SHAPES[shape_name]
    model = build_model(ModelSpec(name, shape, 10, hidden=16), seed=0)
    out = model(torch.rand(5, *shape))
    assert out.shape == (5, 10)
    assert ModuleValidator.validate(model, strict=True) == []


def test_all_registered_models_are_tested() -> None:
    assert set(MODELS) == {
        "softmax",
        "mlp",
        "cnn",
        "dpcnn",
        "cnn1d",
        "logistic",
        "linear",
        "fm_network",
    }


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 14, 14)])
def test_dpcnn_shapes_and_opacus_compatibility(shape: tuple[int, int, int]) -> None:
    model = build_model(ModelSpec("dpcnn", shape, 10, hidden=32), seed=0)
    assert model(torch.rand(3, *shape)).shape == (3, 10)
    assert ModuleValidator.validate(model, strict=True) == []
    if shape == (1, 28, 28):  # Tramer & Boneh's MNIST network: about 26k parameters
        assert sum(p.numel() for p in model.parameters()) == 26010


def test_dpcnn_rejects_images_smaller_than_14() -> None:
    with pytest.raises(ValueError, match=r"dpcnn.*14x14.*\(1, 8, 8\)"):
        build_model(ModelSpec("dpcnn", (1, 8, 8), 10))


@pytest.mark.parametrize("name", ["softmax", "mlp", "cnn"])
def test_build_model_is_seeded(name: str) -> None:
    spec = ModelSpec(name, (1, 8, 8), 10)
    a, b = get_weights(build_model(spec, seed=1)), get_weights(build_model(spec, seed=1))
    c = get_weights(build_model(spec, seed=2))
    assert list(a) == list(b)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], c[k]) for k in a)


def test_build_model_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model(ModelSpec("mlp", (1, 8, 8), 10), seed=9)
    assert torch.equal(torch.rand(3), expected)


def test_unknown_model_names_the_key() -> None:
    with pytest.raises(ValueError, match=r"model\.name must be one of"):
        build_model(ModelSpec("resnet", (1, 8, 8), 10))


def test_cnn_rejects_tiny_images() -> None:
    with pytest.raises(ValueError, match="cnn"):
        build_model(ModelSpec("cnn", (1, 2, 2), 10))


def test_get_set_weights_round_trip() -> None:
    spec = ModelSpec("mlp", (1, 8, 8), 10, hidden=16)
    src, dst = build_model(spec, seed=0), build_model(spec, seed=1)
    weights = get_weights(src)
    assert all(isinstance(v, np.ndarray) for v in weights.values())
    set_weights(dst, weights)
    back = get_weights(dst)
    assert list(back) == list(weights)
    assert all(np.array_equal(back[k], weights[k]) for k in weights)
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(src(x), dst(x))
    # get_weights returns copies
    weights["1.weight"][...] = 0
    assert not np.all(get_weights(src)["1.weight"] == 0)


def test_set_weights_wrong_shape_names_the_key() -> None:
    model = build_model(ModelSpec("softmax", (1, 8, 8), 10))
    weights = get_weights(model)
    weights["1.weight"] = np.zeros((10, 63), dtype=np.float32)
    with pytest.raises(ValueError, match=r"1\.weight"):
        set_weights(model, weights)


def test_set_weights_missing_key() -> None:
    model = build_model(ModelSpec("softmax", (1, 8, 8), 10))
    weights = get_weights(model)
    del weights["1.bias"]
    with pytest.raises(ValueError, match=r"1\.bias"):
        set_weights(model, weights)


# ---------------------------------------------------------------------- training
def test_train_epochs_learns_digits(digits) -> None:
    device = torch.device("cpu")
    model = build_model(ModelSpec("softmax", (1, 8, 8), 10), seed=0)
    loss0, acc0 = evaluate(model, digits.x_train, digits.y_train, device)
    loader = make_loader(digits.x_train, digits.y_train, 32, torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    stats = train_epochs(model, loader, opt, 3, device)
    steps_per_epoch = -(-len(digits.y_train) // 32)
    assert stats.steps == 3 * steps_per_epoch
    assert stats.examples_seen == 3 * len(digits.y_train)
    assert np.isfinite(stats.loss)
    loss1, _ = evaluate(model, digits.x_train, digits.y_train, device)
    assert loss1 < loss0
    assert stats.loss < loss0
    test_loss, test_acc = evaluate(model, digits.x_test, digits.y_test, device)
    assert 0.0 <= test_acc <= 1.0
    assert test_acc > 0.5  # chance is 0.1
    assert test_acc > acc0


def test_evaluate_empty_is_nan() -> None:
    model = build_model(ModelSpec("softmax", (1, 8, 8), 10))
    loss, acc = evaluate(
        model, np.zeros((0, 1, 8, 8), np.float32), np.zeros(0, np.int64), torch.device("cpu")
    )
    assert np.isnan(loss) and np.isnan(acc)


def test_evaluate_batches_agree(digits) -> None:
    model = build_model(ModelSpec("mlp", (1, 8, 8), 10))
    cpu = torch.device("cpu")
    whole = evaluate(model, digits.x_test, digits.y_test, cpu)
    small = evaluate(model, digits.x_test, digits.y_test, cpu, batch_size=7)
    assert whole[0] == pytest.approx(small[0], rel=1e-5)
    assert whole[1] == small[1]


def test_select_device_cpu() -> None:
    assert select_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert select_device("auto") == torch.device("cpu")
    else:
        assert select_device("auto").type == "cuda"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_select_device_cuda_without_gpu() -> None:
    with pytest.raises(ValueError, match="device='cuda'"):
        select_device("cuda")
    with pytest.raises(ValueError, match="no CUDA device"):
        select_device("cuda:1")
