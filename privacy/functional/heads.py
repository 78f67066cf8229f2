"""What a functional-mechanism head releases, how it is solved locally and summed: a registry.

A model served by the functional mechanism has a trainable linear head (``outputs x dim``) on
public features in the L2 unit ball, and an objective kind (``linear``, ``logistic``,
``softmax``). Each kind is a :class:`HeadKind` registered in :data:`HEAD_KINDS`; the client's
trainer and the server's objective aggregation ask it, so neither branches on kind names:

* :meth:`HeadKind.release`: the one noisy release of a client dataset (arrays, the wire form),
  ``epsilon``-DP under replace-one (``(epsilon, delta)``-DP with ``gaussian`` noise);
* :meth:`HeadKind.noise_scale`: the public Laplace scale the release used;
* :meth:`HeadKind.shapes` and :meth:`HeadKind.check`: what a valid release looks like;
* :meth:`HeadKind.local_head` and :meth:`HeadKind.solve`: one client's head, and the head of
  the weighted sum of many releases (post-processing);
* :meth:`HeadKind.loss`: the released objective at a head (post-processing).

``linear`` and ``logistic`` release one quadratic objective per head row
(:class:`RowObjectives`; rows of one dataset share ``epsilon`` by basic composition);
``softmax`` releases one set of statistics for all classes (:class:`SoftmaxHead`,
:mod:`privacy.functional.softmax`), whose noise does not grow with the number of classes.

Every method that draws or needs the noise scale takes ``noise`` (``privacy.functional_noise``,
:data:`privacy.functional.noise.FUNCTIONAL_NOISES`) and ``delta``; a kind lists the noise
kinds it has a sensitivity for in :attr:`HeadKind.noises` (the per-row objectives have L1
sensitivities only, so Laplace only).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from privacy.functional.aggregate import (
    objectives_from_arrays,
    objectives_to_arrays,
    release_shapes,
    solve_summed,
)
from privacy.functional.mechanism import SENSITIVITY_BOUNDS, default_ridge, head_mechanism
from privacy.functional.noise import functional_noise
from privacy.functional.objective import gradient_steps, minimise, stabilise
from privacy.functional.softmax import (
    SoftmaxGaussianMechanism,
    SoftmaxMechanism,
    SoftmaxStatistics,
    softmax_ridge,
    solve_softmax,
)
from privacy.laplace import IntegerSource
from privacy.ledger import Event, PureDpEvent

__all__ = [
    "HEAD_KINDS",
    "HeadKind",
    "SOFTMAX_MECHANISMS",
    "RowObjectives",
    "SoftmaxHead",
    "head_kind",
    "register_head_kind",
]

FloatArray = npt.NDArray[np.float64]
Arrays = dict[str, np.ndarray]


class HeadKind:
    """Interface of a registered head kind (see the module docstring)."""

    name: str = ""
    bounds: tuple[str, ...] = ("l2",)
    """The sensitivity bounds (``privacy.functional_bound``) this kind honours."""
    noises: tuple[str, ...] = ("laplace",)
    """The noise kinds (``privacy.functional_noise``) this kind can release with."""

    def check_noise(self, noise: str) -> None:
        """``ValueError`` naming ``privacy.functional_noise`` when this kind cannot use it."""
        functional_noise(noise)
        if noise not in self.noises:
            raise ValueError(
                f"privacy.functional_noise must be one of {list(self.noises)} for the "
                f"{self.name!r} objective kind (it has no {functional_noise(noise).sensitivity} "
                f"sensitivity for {noise!r} noise), got {noise!r}"
            )

    def shapes(self, outputs: int, dim: int) -> dict[str, tuple[int, ...]]:
        """Shapes of the arrays of one release."""
        raise NotImplementedError

    def noise_scale(
        self,
        epsilon: float,
        bound: str,
        dim: int,
        outputs: int,
        *,
        noise: str = "laplace",
        delta: float = 0.0,
    ) -> float:
        """The noise scale of each released coefficient in Laplace units (``std / sqrt 2``).

        Public: settings and shapes. The Laplace scale for ``laplace``; ``sigma / sqrt 2``
        for ``gaussian`` (:meth:`privacy.functional.noise.FunctionalNoise.scale`).
        """
        raise NotImplementedError

    def event(
        self,
        epsilon: float,
        round: int = 0,  # noqa: A002 - matches the ledger events' field
        *,
        noise: str = "laplace",
        delta: float = 0.0,
    ) -> Event:
        """The ledger event of one release (``PureDpEvent(epsilon)`` for ``laplace``)."""
        self.check_noise(noise)
        return PureDpEvent(epsilon=float(epsilon), round=round, mechanism="functional")

    def release(
        self,
        feats: npt.ArrayLike,
        targets: Sequence[np.ndarray],
        epsilon: float,
        bound: str,
        source: IntegerSource,
        *,
        noise: str = "laplace",
        delta: float = 0.0,
    ) -> Arrays:
        """The noisy release of one dataset, DP as :meth:`event` states (one event).

        ``feats`` are the records the head sees (``||x||_2 <= 1``), ``targets`` one vector
        per head row (:meth:`tasks.models.functional.FunctionalModel.fm_targets`).
        """
        raise NotImplementedError

    def check(self, arrays: Arrays) -> None:
        """``ValueError`` naming the problem when ``arrays`` is not a well-formed release."""
        raise NotImplementedError

    def local_head(
        self,
        arrays: Arrays,
        epsilon: float,
        bound: str,
        start: FloatArray,
        steps: int,
        *,
        noise: str = "laplace",
        delta: float = 0.0,
    ) -> FloatArray:
        """One client's head from its own release: the minimiser, or ``steps`` steps to it."""
        raise NotImplementedError

    def solve(
        self, releases: Sequence[Arrays], noise_scale: float, weights: FloatArray
    ) -> FloatArray:
        """Head ``(outputs, dim)`` minimising ``sum_i a_i f~_i`` with one ridge (FM Sec. 6)."""
        raise NotImplementedError

    def loss(self, arrays: Arrays, head: FloatArray) -> float:
        """The released objective at ``head`` (without its unreleased constant)."""
        raise NotImplementedError


HEAD_KINDS: dict[str, HeadKind] = {}


def register_head_kind(kind: HeadKind) -> HeadKind:
    """Add ``kind`` to :data:`HEAD_KINDS` under ``kind.name``."""
    HEAD_KINDS[kind.name] = kind
    return kind


def head_kind(name: str) -> HeadKind:
    """The registered kind ``name``; ``ValueError`` lists the registered ones."""
    if name not in HEAD_KINDS:
        raise ValueError(
            f"a functional model's objective kind must be one of {sorted(HEAD_KINDS)}, got {name!r}"
        )
    return HEAD_KINDS[name]


@dataclass(frozen=True)
class RowObjectives(HeadKind):
    """One quadratic objective per head row (``linear``, ``logistic``; FM Secs. 4 and 5).

    ``outputs`` rows built from the same records share ``epsilon`` (``epsilon / outputs``
    each: basic composition, :func:`privacy.functional.mechanism.head_mechanism`).
    """

    name: str = "logistic"
    bounds: tuple[str, ...] = SENSITIVITY_BOUNDS

    def shapes(self, outputs: int, dim: int) -> dict[str, tuple[int, ...]]:
        """See :meth:`HeadKind.shapes`."""
        return release_shapes(outputs, dim)

    def noise_scale(
        self,
        epsilon: float,
        bound: str,
        dim: int,
        outputs: int,
        *,
        noise: str = "laplace",
        delta: float = 0.0,
    ) -> float:
        """See :meth:`HeadKind.noise_scale`."""
        self.check_noise(noise)
        return head_mechanism(epsilon, self.name, bound, outputs).noise_scale(dim)

    def release(
        self,
        feats: npt.ArrayLike,
        targets: Sequence[np.ndarray],
        epsilon: float,
        bound: str,
        source: IntegerSource,
        *,
        noise: str = "laplace",
        delta: float = 0.0,
    ) -> Arrays:
        """See :meth:`HeadKind.release`."""
        self.check_noise(noise)
        mech = head_mechanism(epsilon, self.name, bound, len(targets))
        return objectives_to_arrays(
            [mech.perturb(mech.objective(feats, t), source) for t in targets]
        )

    def check(self, arrays: Arrays) -> None:
        """See :meth:`HeadKind.check`."""
        objectives_from_arrays(arrays)

    def local_head(
        self,
        arrays: Arrays,
        epsilon: float,
        bound: str,
        start: FloatArray,
        steps: int,
        *,
        noise: str = "laplace",
        delta: float = 0.0,
    ) -> FloatArray:
        """See :meth:`HeadKind.local_head`."""
        self.check_noise(noise)
        objectives = objectives_from_arrays(arrays)
        mech = head_mechanism(epsilon, self.name, bound, len(objectives))
        ridge = default_ridge(mech, objectives[0].dim)
        if steps == 0:
            return np.stack([minimise(o, ridge=ridge) for o in objectives])
        return np.stack(
            [
                gradient_steps(stabilise(o, ridge=ridge), start[k], steps=steps)
                for k, o in enumerate(objectives)
            ]
        )

    def solve(
        self, releases: Sequence[Arrays], noise_scale: float, weights: FloatArray
    ) -> FloatArray:
        """See :meth:`HeadKind.solve`."""
        parsed = [objectives_from_arrays(r) for r in releases]
        return np.stack(
            [
                solve_summed([p[k] for p in parsed], noise_scale, weights)
                for k in range(len(parsed[0]))
            ]
        )

    def loss(self, arrays: Arrays, head: FloatArray) -> float:
        """See :meth:`HeadKind.loss`."""
        objectives = objectives_from_arrays(arrays)
        return float(sum(o.value(w) for o, w in zip(objectives, head, strict=True)))


@dataclass(frozen=True)
class SoftmaxHead(HeadKind):
    """The softmax expansion: one release ``[B, triu(S)]`` for all ``K`` classes.

    ``bound`` (``privacy.functional_bound``) is accepted and not needed: the softmax
    sensitivities ``Delta_1 = 2 sqrt(d) + d + 1`` (``laplace``) and ``Delta_2 = 3 / sqrt 2``
    (``gaussian``) are the ones derived in :mod:`privacy.functional.softmax`.
    """

    name: str = "softmax"
    noises: tuple[str, ...] = ("laplace", "gaussian")

    def mechanism(
        self, epsilon: float, noise: str, delta: float
    ) -> SoftmaxMechanism | SoftmaxGaussianMechanism:
        """The mechanism of one release with ``noise`` (a key of :data:`SOFTMAX_MECHANISMS`)."""
        self.check_noise(noise)
        return SOFTMAX_MECHANISMS[noise](epsilon, delta)

    def event(
        self,
        epsilon: float,
        round: int = 0,  # noqa: A002
        *,
        noise: str = "laplace",
        delta: float = 0.0,
    ) -> Event:
        """See :meth:`HeadKind.event`."""
        return self.mechanism(epsilon, noise, delta).event(round)

    def shapes(self, outputs: int, dim: int) -> dict[str, tuple[int, ...]]:
        """See :meth:`HeadKind.shapes`."""
        return {"class_sums": (outputs, dim), "gram": (dim, dim)}

    def noise_scale(
        self,
        epsilon: float,
        bound: str,
        dim: int,
        outputs: int,
        *,
        noise: str = "laplace",
        delta: float = 0.0,
    ) -> float:
        """See :meth:`HeadKind.noise_scale`: no ``outputs``, and no ``dim`` for ``gaussian``."""
        return self.mechanism(epsilon, noise, delta).noise_scale(dim)

    def release(
        self,
        feats: npt.ArrayLike,
        targets: Sequence[np.ndarray],
        epsilon: float,
        bound: str,
        source: IntegerSource,
        *,
        noise: str = "laplace",
        delta: float = 0.0,
    ) -> Arrays:
        """See :meth:`HeadKind.release`."""
        mech = self.mechanism(epsilon, noise, delta)
        onehot = np.column_stack([np.asarray(t, dtype=np.float64) for t in targets])
        if not (np.isin(onehot, (0.0, 1.0)).all() and np.all(onehot.sum(axis=1) == 1.0)):
            raise ValueError(
                "softmax targets must be one indicator vector per class, one class per record"
            )
        stats = SoftmaxStatistics.from_records(feats, onehot.argmax(axis=1), onehot.shape[1])
        return mech.perturb(stats, source).to_arrays()

    def check(self, arrays: Arrays) -> None:
        """See :meth:`HeadKind.check`."""
        SoftmaxStatistics.from_arrays(arrays)

    def local_head(
        self,
        arrays: Arrays,
        epsilon: float,
        bound: str,
        start: FloatArray,
        steps: int,
        *,
        noise: str = "laplace",
        delta: float = 0.0,
    ) -> FloatArray:
        """See :meth:`HeadKind.local_head`."""
        stats = SoftmaxStatistics.from_arrays(arrays)
        scale = self.noise_scale(epsilon, bound, stats.dim, stats.classes, noise=noise, delta=delta)
        ridge = softmax_ridge(scale, stats.dim)
        target = stats.minimiser(ridge=ridge)
        if steps == 0:
            return target
        # Gradient descent on the stabilised expansion: W <- W - lr (H W S_r - P B). H has
        # eigenvalues 1/K (and 0 along 1), so lr = K / lambda_max(S_r) contracts every
        # direction P acts on; the fixed point is ``target`` (plus start's class-mean row).
        lam, q = np.linalg.eigh(stats.gram)
        tol = max(float(np.abs(lam).max()), ridge, 1e-300) * stats.dim * 1e-12
        lam_r = np.where(lam > tol, lam + ridge, 0.0)
        s_r = (q * lam_r) @ q.T
        k = stats.classes
        centred_b = stats.class_sums - stats.class_sums.mean(axis=0, keepdims=True)
        proj = (q[:, lam > tol]) @ q[:, lam > tol].T
        lr = k / max(float(lam_r.max()), 1e-300)
        w = np.array(start, dtype=np.float64)
        for _ in range(steps):
            centred_w = w - w.mean(axis=0, keepdims=True)
            grad = (centred_w @ s_r) / k - centred_b @ proj
            w = w - lr * grad
        return w

    def solve(
        self, releases: Sequence[Arrays], noise_scale: float, weights: FloatArray
    ) -> FloatArray:
        """See :meth:`HeadKind.solve`."""
        return solve_softmax(
            [SoftmaxStatistics.from_arrays(r) for r in releases], noise_scale, weights
        )

    def loss(self, arrays: Arrays, head: FloatArray) -> float:
        """See :meth:`HeadKind.loss`."""
        return SoftmaxStatistics.from_arrays(arrays).value(head)


SOFTMAX_MECHANISMS: dict[
    str, Callable[[float, float], SoftmaxMechanism | SoftmaxGaussianMechanism]
] = {
    "laplace": lambda epsilon, delta: SoftmaxMechanism(epsilon),
    "gaussian": SoftmaxGaussianMechanism,
}
"""Per ``privacy.functional_noise``: ``(epsilon, delta) ->`` the softmax head's mechanism."""


register_head_kind(RowObjectives("linear"))
register_head_kind(RowObjectives("logistic"))
register_head_kind(SoftmaxHead())
