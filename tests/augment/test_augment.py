"""DiffAugment: shape, device, dtype, layout and range kept; identity at zero strength; differentiable;
random per image; each transform does what it says."""
import pytest
import torch

from dcgan import augment
from dcgan.augment.color import brightness, saturation
from dcgan.augment.cutout import cutout
from dcgan.augment.translation import RATIO as TRANSLATION_RATIO, translation


# every registered augmentation alone, and all of them together
POLICIES = [*augment.REGISTRY.names(), ",".join(augment.REGISTRY.names())]


def batch(n=16, c=3, size=32, seed=0):
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("channels", [1, 3])
def test_keeps_shape_device_dtype_and_range(policy, channels):
    x = batch(c=channels)
    y = augment.DiffAugment(policy)(x)
    assert y.shape == x.shape and y.device == x.device and y.dtype == x.dtype
    assert y.min() >= -1 and y.max() <= 1
    assert not torch.equal(y, x)


@pytest.mark.parametrize("policy", POLICIES)
def test_identity_at_zero_strength(policy):
    x = batch()
    for name in augment.parse_policy(policy):
        torch.testing.assert_close(augment.REGISTRY.get(name)(x, 0.0), x, rtol=0, atol=1e-6)
    assert not augment.DiffAugment(policy, strength=0.0)
    assert not augment.DiffAugment("")
    assert augment.DiffAugment("") (x) is x


@pytest.mark.parametrize("policy", POLICIES)
def test_bf16_and_channels_last_are_kept(policy):
    x = batch().to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    y = augment.DiffAugment(policy)(x)
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("policy", POLICIES)
def test_gradients_reach_the_input(policy):
    """G learns through the augmentation: every policy passes gradients."""
    x = batch().requires_grad_(True)
    augment.DiffAugment(policy)(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_parameters_are_drawn_per_image():
    x = batch(n=1).expand(32, -1, -1, -1).contiguous()  # 32 copies of one image
    for name in augment.REGISTRY.names():
        y = augment.REGISTRY.get(name)(x)
        distinct = {tuple(img.flatten()[:2000].tolist()) for img in y}
        assert len(distinct) > 1, name        # drawn per image, not once per batch


def test_translation_shifts_with_zero_fill():
    torch.manual_seed(0)
    x = batch(n=64, c=1, size=16)
    y = translation(x)
    s = int(16 * TRANSLATION_RATIO + 0.5)
    for img, out in zip(x[:, 0], y[:, 0]):
        found = False
        for dy in range(-s, s + 1):
            for dx in range(-s, s + 1):
                ref = torch.zeros_like(img)
                src = img[max(0, -dy):16 - max(0, dy), max(0, -dx):16 - max(0, dx)]
                ref[max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
                found |= torch.equal(ref, out)
        assert found


def test_cutout_zeroes_one_square_of_half_the_side_at_most():
    torch.manual_seed(0)
    x = torch.full((64, 3, 32, 32), 0.5)
    y = cutout(x)
    zero = (y == 0).all(dim=1)                       # same pixels in every channel
    assert ((y == 0) | (y == 0.5)).all()
    counts = zero.flatten(1).sum(1)
    assert counts.max() == 16 * 16 and counts.min() > 0   # clipped at the border sometimes, never bigger
    for m in zero:
        rows, cols = m.any(1).nonzero(), m.any(0).nonzero()
        assert m.sum() == len(rows) * len(cols)      # a rectangle


def test_color_changes_brightness_saturation_contrast_per_image():
    torch.manual_seed(0)
    x = batch(n=256)
    b = brightness(x) - x
    assert torch.allclose(b, b[:, :1, :1, :1].expand_as(b), atol=1e-6)   # one offset per image
    assert b[:, 0, 0, 0].abs().max() <= 0.5 and b[:, 0, 0, 0].std() > 0.2
    grey = x.mean(1, keepdim=True).expand_as(x)
    torch.testing.assert_close(saturation(grey), grey)          # grey has no saturation to change


def test_policy_names_are_the_registered_augmentations():
    assert set(augment.REGISTRY.names()) >= {"color", "translation", "cutout"}
    with pytest.raises(ValueError, match="unknown augmentation 'nope'"):
        augment.DiffAugment("color,nope")
    assert augment.parse_policy(" color , cutout ") == ["color", "cutout"]
