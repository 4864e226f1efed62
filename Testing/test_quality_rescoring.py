"""The cropped re-scoring equals the full MONAI sliding-window pass (oracle: ``sliding_window_logits``, i.e.
MONAI's own ``sliding_window_inference``), while running only the windows that reach the region."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from SegXAILib.errors import SegXAIError
from SegXAILib.inference import count_windows, sliding_window_logits
from SegXAILib.rescoring import region_probability

torch.set_num_threads(1)


def conv_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv3d(4, 3, 3, padding=1)).eval()


def full_score(net, image, region, patch, overlap, class_index):
    prob = torch.softmax(sliding_window_logits(net, image, patch, overlap), dim=0)[class_index].numpy()
    return float(prob[region].astype(np.float64).mean())


@pytest.mark.parametrize("shape, box", [
    ((40, 20, 20), (slice(2, 6), slice(3, 9), slice(4, 8))),  # a small region at one end: few windows
    ((30, 21, 12), (slice(10, 20), slice(5, 16), slice(2, 10))),  # last axis smaller than the patch: padded
])
def test_cropped_score_equals_the_full_sliding_window_score(shape, box):
    net = conv_net()
    rng = np.random.default_rng(0)
    image = rng.random(shape).astype(np.float32)
    region = np.zeros(shape, dtype=bool)
    region[box] = True
    patch, overlap = (16, 16, 16), 0.5
    score = region_probability(net, 2, region, patch, overlap)
    assert score(image) == pytest.approx(full_score(net, image, region, patch, overlap, 2), abs=1e-6)
    perturbed = image.copy()
    perturbed[region] = 0.0
    assert score(perturbed) == pytest.approx(full_score(net, perturbed, region, patch, overlap, 2), abs=1e-6)
    assert len(score.windows) <= count_windows(shape, patch, overlap)
    if shape == (40, 20, 20):
        assert len(score.windows) < count_windows(shape, patch, overlap) / 3


def test_an_empty_region_or_a_wrong_grid_is_a_clear_error():
    net = conv_net()
    with pytest.raises(SegXAIError, match="empty"):
        region_probability(net, 1, np.zeros((20, 20, 20), bool), (16, 16, 16), 0.5)
    region = np.zeros((20, 20, 20), bool)
    region[5, 5, 5] = True
    with pytest.raises(SegXAIError, match="does not match"):
        region_probability(net, 1, region, (16, 16, 16), 0.5)(np.zeros((20, 20, 21), np.float32))


def test_gradient_equals_autograd_through_monai_sliding_window():
    from monai.inferers import sliding_window_inference

    net = conv_net()
    rng = np.random.default_rng(1)
    shape = (30, 21, 12)
    image = rng.random(shape).astype(np.float32)
    region = np.zeros(shape, dtype=bool)
    region[10:20, 5:16, 2:10] = True
    x = torch.from_numpy(image)[None, None].requires_grad_(True)
    logits = sliding_window_inference(x, (16, 16, 16), 2, net, overlap=0.5, mode="gaussian")
    torch.softmax(logits[0], dim=0)[1][torch.from_numpy(region)].mean().backward()
    ours = region_probability(net, 1, region, (16, 16, 16), 0.5).gradient(image)
    assert np.allclose(ours, x.grad[0, 0].numpy(), atol=1e-7 + 1e-4 * float(x.grad.abs().max()))
