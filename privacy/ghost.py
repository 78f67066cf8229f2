"""Ghost clipping (``privacy.grad_sample_mode=ghost``) that cannot take an unclipped step.

Opacus' fast gradient and ghost clipping (Li et al., ICLR 2022; Bu et al. 2022) computes the
per-sample gradient norms in a first backward pass and the sum of clipped gradients in a
second one, of the loss weighted by each example's clipping factor; its optimizer then only
adds the noise. :func:`privacy.dpsgd.make_private` arms the optimizer with
:func:`require_clipped_steps`, and :meth:`privacy.dpsgd.PrivateTraining.loss` returns a
:class:`GhostLoss`.
"""

from __future__ import annotations

from typing import Any

from opacus.optimizers import DPOptimizerFastGradientClipping
from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping

__all__ = ["GhostLoss", "require_clipped_steps"]


class GhostLoss(DPTensorFastGradientClipping):
    """Opacus' two-pass ghost-clipping loss that marks its optimizer's step as clipped."""

    def backward(self) -> None:
        """Both of Opacus' passes, then mark the step clipped for :func:`require_clipped_steps`."""
        super().backward()
        self.optimizer._fedpriv_clipped = True


def require_clipped_steps(optimizer: DPOptimizerFastGradientClipping) -> None:
    """Make a ghost-clipping optimizer refuse a step whose gradient was not clipped.

    Under ``ghost`` the optimizer noises ``p.grad`` as it finds it: only the second backward
    pass of :meth:`PrivateTraining.loss` makes it the sum of clipped per-sample gradients.
    A plain ``loss.backward()`` would leave the unclipped gradient there, whose sensitivity
    the noise does not cover; such a step raises instead of being taken.
    """
    pre_step = optimizer.pre_step
    optimizer._fedpriv_clipped = False

    def checked_pre_step(closure: Any = None) -> Any:
        if not optimizer._fedpriv_clipped:
            raise RuntimeError(
                "privacy.grad_sample_mode=ghost: the step's gradient was not clipped; "
                "compute the loss with PrivateTraining.loss (train_epochs(..., reduce=...))"
            )
        optimizer._fedpriv_clipped = False
        return pre_step(closure)

    optimizer.pre_step = checked_pre_step  # type: ignore[method-assign]
