"""uint8 from the workers, scaled, normalised and erased on the device: the composed transform's floats."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import create_transform
from torch.utils.data import DataLoader
from torchvision import transforms as T

from vitpipe.data.torchdata import ImageDataset, sample_seed
from vitpipe.model.classifier import ModelInfo
from vitpipe.model.devicetransform import collate_host, split_transform
from vitpipe.model.transforms import build_eval_transform, build_train_transform, eval_spec
from vitpipe.runtime import forked_rng

INFO = ModelInfo(input_size=32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                 data_config={"input_size": (3, 32, 32), "mean": (0.485, 0.456, 0.406),
                              "std": (0.229, 0.224, 0.225), "interpolation": "bicubic", "crop_pct": 0.9},
                 weights_source="random-init")
SPEC = eval_spec("seed", INFO)


def _images(n: int = 60) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (36 + i % 7, 44, 3), dtype=np.uint8)) for i in range(n)]


def _both(transform, images, device: torch.device = torch.device("cpu")) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(the composed transform's batch, the split transform's batch on ``device``, images erased)."""
    split = split_transform(transform)
    assert split is not None
    reference, host = [], []
    for k, image in enumerate(images):
        with forked_rng(1000 + k):
            reference.append(transform(image))
        with forked_rng(1000 + k):
            host.append((split.host(image), 0))
    pixels, _, erases = collate_host(host)
    assert pixels.dtype == torch.uint8
    out = split.tail(pixels.to(device), erases)
    return torch.stack(reference), out.cpu(), len(erases)


@pytest.mark.parametrize("name", ["eval", "seed", "timm-eval"])
def test_the_split_transform_gives_the_composed_transforms_floats_bit_for_bit_on_the_cpu(name):
    transform = {"eval": build_eval_transform(SPEC), "seed": build_train_transform("seed", SPEC, INFO),
                 "timm-eval": create_transform(**INFO.data_config, is_training=False)}[name]
    reference, out, erased = _both(transform, _images())
    assert torch.equal(out, reference)
    if name == "seed":
        assert erased > 3  # RandomErasing(p=0.2) drew regions, and they match


def test_erasing_with_a_fixed_value_and_with_no_region_found_match_too():
    transform = T.Compose([T.CenterCrop(24), T.ToTensor(), T.Normalize((0.5,) * 3, (0.25,) * 3),
                           T.RandomErasing(p=0.9, scale=(0.02, 0.5), value=(0.1, 0.2, 0.3))])
    reference, out, erased = _both(transform, _images(30))
    assert erased > 10 and torch.equal(out, reference)
    never_fits = T.Compose([T.CenterCrop(24), T.ToTensor(), T.Normalize((0.5,) * 3, (0.25,) * 3),
                            T.RandomErasing(p=1.0, scale=(0.99, 1.0), ratio=(1.0, 1.0))])
    reference, out, erased = _both(never_fits, _images(5))
    assert erased == 0 and torch.equal(out, reference)


def test_transforms_that_do_not_split_run_whole_on_the_host():
    assert split_transform(T.ToTensor()) is None
    assert split_transform(T.Compose([T.ToTensor(), T.Lambda(lambda x: x)])) is None
    assert split_transform(T.Compose([T.ToTensor(), T.Normalize((0.5,), (0.5,)), T.RandomErasing(),
                                      T.RandomErasing()])) is None
    timm_train = create_transform(**INFO.data_config, is_training=True, re_prob=0.25)  # timm's own erasing
    assert split_transform(timm_train) is None
    assert split_transform(create_transform(**INFO.data_config, is_training=True)) is not None


def test_a_loader_with_workers_gives_the_per_image_seeded_floats(tiny_index):
    """As the feature pass and the image engine load them: workers, a seed per image, collated batches."""
    samples = tiny_index.samples("train")
    transform = build_train_transform("seed", SPEC, INFO)
    split = split_transform(transform)
    loader = DataLoader(ImageDataset(tiny_index.root, samples, split.host, seed=7), batch_size=8, num_workers=2,
                        collate_fn=collate_host)
    got = torch.cat([split.tail(pixels, erases) for pixels, _, erases in loader])
    reference = ImageDataset(tiny_index.root, samples, transform, seed=7)
    assert torch.equal(got, torch.stack([reference[i][0] for i in range(len(samples))]))
    assert sample_seed(7, samples[0]) != sample_seed(8, samples[0])


@pytest.mark.gpu
def test_the_device_part_on_cuda_is_within_rounding_of_the_cpus():
    """On CUDA the division by 255 is a multiplication by its reciprocal (one rounding apart): close, not equal."""
    transform = build_train_transform("seed", SPEC, INFO)
    reference, out, erased = _both(transform, _images(), torch.device("cuda"))
    assert erased > 3
    torch.testing.assert_close(out, reference, rtol=1e-6, atol=1e-6)
