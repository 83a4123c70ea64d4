"""Every registered loss on known logits, and R1 on a discriminator whose input gradient is known."""
import math

import pytest
import torch
from torch import nn

from dcgan import losses
from dcgan.losses.r1 import r1_penalty


def test_bce_on_known_logits():
    real, fake = torch.tensor([0.0, 0.0]), torch.tensor([0.0])
    bce = losses.build("bce")
    assert bce.d(real, fake).item() == pytest.approx(2 * math.log(2))
    assert bce.g(torch.tensor([math.log(3)])).item() == pytest.approx(-math.log(0.75))


def test_hinge_on_known_logits():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-3.0, 0.0])
    # relu(1 - real) = [0, 0.5, 2] -> 2.5/3; relu(1 + fake) = [0, 1] -> 0.5
    hinge = losses.build("hinge")
    assert hinge.d(real, fake).item() == pytest.approx(2.5 / 3 + 0.5)
    assert hinge.g(fake).item() == pytest.approx(1.5)


def test_unknown_loss_is_named_with_the_choices():
    with pytest.raises(ValueError, match="unknown loss 'nope' \\(choose from bce, hinge"):
        losses.build("nope")


@pytest.mark.parametrize("name", losses.REGISTRY.names())
def test_every_loss_is_differentiable_and_pushes_d_and_g_apart(name):
    """D's loss falls as real logits rise and fake ones fall; G's falls as fake logits rise."""
    loss = losses.build(name)
    real, fake = torch.zeros(4, requires_grad=True), torch.zeros(4, requires_grad=True)
    loss.d(real, fake).backward()
    assert (real.grad < 0).all() and (fake.grad > 0).all()
    fake_g = torch.zeros(4, requires_grad=True)
    loss.g(fake_g).backward()
    assert (fake_g.grad < 0).all()


class Quadratic(nn.Module):
    """D(x) = sum(w * x) + sum(x^2) / 2: grad_x D = w + x."""

    def __init__(self, shape):
        super().__init__()
        self.w = nn.Parameter(torch.randn(shape))

    def forward(self, x):
        return (x * self.w).flatten(1).sum(1) + x.square().flatten(1).sum(1) / 2


def test_r1_penalty_equals_the_squared_input_gradient_and_trains_d():
    torch.manual_seed(0)
    D = Quadratic((1, 4, 4))
    x = torch.randn(5, 1, 4, 4)
    r1 = r1_penalty(D, x)
    expected = (D.w.detach() + x).square().flatten(1).sum(1).mean()
    torch.testing.assert_close(r1, expected)
    r1.backward()                                   # the penalty is differentiable w.r.t. D's weights
    torch.testing.assert_close(D.w.grad, (2 * (D.w.detach() + x)).mean(0))
    assert x.grad is None                           # the caller's images are untouched
