"""Private predictions from a trained run: the Python API behind ``experiments.predict``.

A query is one row of raw features (what the dataset's loader produces: pixels in [0, 1],
Adult's encoded columns). Inference privacy hides it within an L2 radius ``alpha`` of the
**query space**: each feature divided by its declared public range,
``q = (x - lower) / (upper - lower)`` (:mod:`tasks.data.bounds`), so

* digits, MNIST (pixels in [0, 1]): the query space is the pixels themselves; ``alpha = 1``
  is one pixel changed from black to white, or 64 digits pixels each changed by 1/8;
* Adult: ``alpha`` is in units of each column's public range: 0.1 hides about 7 years of
  age (range 17-90), 10 hours a week (1-99) or 1.5 years of education (1-16); a 0/1
  indicator (married, executive/professional) flips at distance 1;
* datasets without declared bounds: the raw features.

The map from the query space to the model's raw input is public and affine; it is folded
into the model's first ``Linear`` where there is one (:func:`privacy.inference.fold_input_affine`),
so the certified Lipschitz bound is the query-space one. The bound of a run is computed once
and stored beside its model as ``lipschitz.json`` (with the SHA-256 of ``final_model.npz``).

1. :func:`load_run` (or :meth:`InferenceModel.from_module`) gives an :class:`InferenceModel`.
2. :func:`private_predict` answers queries under a mechanism (one fresh noise draw each).
3. :func:`evaluate_private` measures accuracy on labelled queries (a run's test split:
   :func:`run_test_split`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from privacy.inference import (
    InferenceMechanism,
    LipschitzCertificate,
    QueryBudget,
    fold_input_affine,
    input_key,
    lipschitz_bound,
    make_mechanism,
)
from privacy.inference.lipschitz import leaf_layers
from protocol.atomic import write_atomically
from protocol.checkpoint import INDEX, checkpoint_dir, loads
from protocol.settings import RunSettings, upgrade_run_config
from tasks.data import PUBLIC_BOUNDS, load_dataset, specs_from_settings
from tasks.models import build_model, model_spec, set_weights

FINAL_MODEL = "final_model.npz"
CERTIFICATE = "lipschitz.json"


@dataclass(frozen=True)
class QuerySpace:
    """Public affine map ``raw = shift + scale * q`` and the raw column names."""

    names: tuple[str, ...]
    scale: np.ndarray
    shift: np.ndarray
    bounded: bool  # the query space is the box [0, 1]^d (declared public bounds)

    @classmethod
    def for_dataset(cls, dataset: str, input_shape: tuple[int, ...]) -> QuerySpace:
        """From ``dataset``'s declared public bounds; the identity where it declares none."""
        d = int(np.prod(input_shape))
        if dataset in PUBLIC_BOUNDS:
            fb = PUBLIC_BOUNDS[dataset].features
            if len(fb.names) == d:
                lower, upper = np.asarray(fb.lower, float), np.asarray(fb.upper, float)
                return cls(tuple(fb.names), upper - lower, lower, True)
        return cls(tuple(f"x_{i}" for i in range(d)), np.ones(d), np.zeros(d), False)

    def to_query(self, raw: np.ndarray) -> np.ndarray:
        """Raw feature rows ``(n, d)`` to the query space."""
        return (np.asarray(raw, np.float64) - self.shift) / self.scale

    def describe(self) -> dict[str, object]:
        """JSON view (names, scale, shift)."""
        return {
            "names": list(self.names),
            "scale": [float(s) for s in self.scale],
            "shift": [float(s) for s in self.shift],
        }


@dataclass
class InferenceModel:
    """A model on the query space, its data shape, and (lazily) its certified bound."""

    module: nn.Module
    input_shape: tuple[int, ...]
    outputs: int
    space: QuerySpace
    regression: bool = False
    certificate_path: Path | None = None
    weights_sha256: str = ""
    _certificate: LipschitzCertificate | None = field(default=None, repr=False)

    @classmethod
    def from_module(
        cls,
        model: nn.Module,
        input_shape: tuple[int, ...],
        outputs: int,
        space: QuerySpace | None = None,
        *,
        regression: bool = False,
    ) -> InferenceModel:
        """Wrap a raw-input model; the query-space map is folded in (identity by default)."""
        d = int(np.prod(input_shape))
        space = space or QuerySpace(
            tuple(f"x_{i}" for i in range(d)), np.ones(d), np.zeros(d), False
        )
        folded = fold_input_affine(model, space.scale, space.shift, tuple(input_shape))
        folded.eval()
        return cls(folded, tuple(input_shape), int(outputs), space, regression)

    def certificate(self) -> LipschitzCertificate:
        """The certified Lipschitz bound (query space -> scores), read from or written to file."""
        if self._certificate is None:
            self._certificate = _stored_certificate(self)
        if self._certificate is None:  # computed once, then stored beside the model
            self._certificate = lipschitz_bound(self.module, self.input_shape)
            if self.certificate_path is not None:
                stored = self._certificate.to_dict() | {
                    "weights_sha256": self.weights_sha256,
                    "query_space": self.space.describe(),
                }
                write_atomically(self.certificate_path, json.dumps(stored, indent=1))
        return self._certificate

    def scores(self, queries: np.ndarray) -> np.ndarray:
        """The model's exact scores (logits) for query-space rows ``(n, d)``, float64."""
        x = torch.as_tensor(np.asarray(queries, np.float32)).reshape(-1, *self.input_shape)
        with torch.no_grad():
            out = self.module(x)
        return out.double().reshape(len(x), -1).numpy()


def _stored_certificate(model: InferenceModel) -> LipschitzCertificate | None:
    path = model.certificate_path
    if path is None or not path.is_file():
        return None
    data = json.loads(path.read_text())
    if data.get("weights_sha256") != model.weights_sha256:
        return None  # another model's: recompute
    if data.get("query_space") != model.space.describe():
        return None
    cert = LipschitzCertificate.from_dict(data)
    product = math.prod(layer.bound for layer in cert.layers)
    if len(cert.layers) != len(leaf_layers(model.module)) or not math.isclose(
        product, cert.bound, rel_tol=1e-9
    ):
        raise ValueError(
            f"{path} does not fit the model (its layer bounds multiply to {product:g}, it "
            f"states {cert.bound:g}); delete it to recompute"
        )
    return cert


def run_settings(run_dir: Path) -> RunSettings:
    """The settings a run was trained with (its checkpoint's flat run config)."""
    index = checkpoint_dir(run_dir) / INDEX
    if not index.is_file():
        raise ValueError(
            f"run_dir={str(run_dir)!r} has no {index.relative_to(run_dir)} (the "
            "run's settings); is it a fedpriv run directory?"
        )
    config = loads(index.read_text()).get("run_config", {})
    return RunSettings.from_run_config(upgrade_run_config(config))


def load_run(run_dir: str | Path) -> InferenceModel:
    """The final model of a completed run, on its query space (``ValueError`` if absent)."""
    run = Path(run_dir)
    path = run / FINAL_MODEL
    if not path.is_file():
        raise ValueError(f"run_dir={str(run)!r} has no {FINAL_MODEL} (the run did not complete)")
    settings = run_settings(run)
    bundle = load_dataset(specs_from_settings(settings)[0])
    spec = model_spec(settings, bundle.input_shape, bundle.num_classes)
    model = build_model(spec, seed=settings.seed)
    raw = path.read_bytes()
    with np.load(path, allow_pickle=False) as npz:
        set_weights(model, {k: npz[k] for k in npz.files})
    space = QuerySpace.for_dataset(settings.dataset_name, bundle.input_shape)
    regression = bundle.num_classes == 0
    out = InferenceModel.from_module(
        model, bundle.input_shape, max(1, bundle.num_classes), space, regression=regression
    )
    out.certificate_path = run / CERTIFICATE
    out.weights_sha256 = hashlib.sha256(raw).hexdigest()
    return out


def run_test_split(run_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The run's test split, rebuilt from its settings (raw features, labels)."""
    settings = run_settings(Path(run_dir))
    bundle = load_dataset(specs_from_settings(settings)[0])
    return bundle.x_test.reshape(len(bundle.x_test), -1), bundle.y_test


def mechanism_for(
    model: InferenceModel, name: str, *, epsilon: float, delta: float, radius: float
) -> InferenceMechanism:
    """Mechanism ``name`` calibrated for ``model`` (output mechanisms read its bound)."""
    probe = make_mechanism(
        name, epsilon=epsilon, delta=delta, radius=radius, lipschitz=1.0, outputs=1
    )
    if probe.stage != "output":
        return probe
    bound = model.certificate().bound
    return make_mechanism(
        name, epsilon=epsilon, delta=delta, radius=radius, lipschitz=bound, outputs=model.outputs
    )


@dataclass(frozen=True)
class Predictions:
    """Per query: the predicted class (or value) and the released (noised) scores."""

    labels: np.ndarray
    scores: np.ndarray
    mechanism: InferenceMechanism


def private_predict(
    model: InferenceModel | str | Path,
    raw: np.ndarray,
    mechanism: InferenceMechanism | str,
    *,
    epsilon: float = math.inf,
    delta: float = 0.0,
    radius: float = 1.0,
    budget: QueryBudget | None = None,
    keys: list[str] | None = None,
) -> Predictions:
    """Answer each row of ``raw`` (raw features, ``(n, d)``) under ``mechanism``.

    1. Map the rows to the query space; charge ``budget`` (if given) one query per row,
       keyed by ``keys`` or each row's hash (:func:`privacy.inference.input_key`).
    2. Input mechanisms noise the query (fresh secure draw per row), then clip it to the
       public box ``[0, 1]^d`` where the dataset declares one (post-processing).
    3. The model's scores; output mechanisms noise them (fresh draw per row).
    4. Labels: argmax of the released scores (the value itself for regression).
    """
    model = load_run(model) if isinstance(model, str | Path) else model
    mech = (
        mechanism_for(model, mechanism, epsilon=epsilon, delta=delta, radius=radius)
        if isinstance(mechanism, str)
        else mechanism
    )
    q = model.space.to_query(np.asarray(raw, np.float64).reshape(len(raw), -1))
    if budget is not None:
        budget.charge(keys if keys is not None else [input_key(row) for row in q])
    if mech.stage == "input":
        q = mech.release(q)
        if model.space.bounded:
            q = np.clip(q, 0.0, 1.0)
    scores = model.scores(q)
    if mech.stage == "output":
        scores = mech.release(scores)
    labels = scores[:, 0] if model.regression else scores.argmax(axis=1)
    return Predictions(labels, scores, mech)


def evaluate_private(
    model: InferenceModel, raw: np.ndarray, y: np.ndarray, mechanism: InferenceMechanism
) -> float:
    """Accuracy (mean squared error for regression) of :func:`private_predict` on ``raw``."""
    pred = private_predict(model, raw, mechanism)
    if model.regression:
        return float(np.mean((pred.labels - np.asarray(y, np.float64)) ** 2))
    return float(np.mean(pred.labels == np.asarray(y)))
