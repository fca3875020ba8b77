"""Decoded uint8 images with device augmentation (the GPU data path), checked on the CPU."""

from __future__ import annotations

import torch
from conftest import tiny_vit_spec, live_files, tiny_params, train_outputs

from vitpipe.data.torchdata import ImageDataset
from vitpipe.model.transforms import build_eval_transform
from vitpipe.train.decoded import DecodedImages, DeviceAugment
from vitpipe.train.training import run_training

CPU = torch.device("cpu")


def test_decoded_eval_batches_equal_the_eval_transform(tmp_path, tiny_index):
    spec = tiny_vit_spec()
    samples = tiny_index.samples("valid")
    store = DecodedImages.build_or_open(tmp_path, tiny_index.root, samples, spec, num_workers=0)
    images, labels = next(store.batches(torch.arange(len(samples)), 64, drop_last=False, device=CPU))
    ours = DeviceAugment(spec, train=False, device=CPU)(images)  # (B, 3, 32, 32)
    dataset = ImageDataset(tiny_index.root, samples, build_eval_transform(spec))
    reference = torch.stack([dataset[i][0] for i in range(len(samples))])
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    assert labels.tolist() == [s.label for s in samples]
    assert len(list(tmp_path.glob("*.npy"))) == 1
    DecodedImages.build_or_open(tmp_path, tiny_index.root, samples, spec, num_workers=0)  # reopened, not rebuilt
    assert len(list(tmp_path.glob("*.npy"))) == 1


def test_device_augmentation_flips_and_erases_per_image(tmp_path, tiny_index):
    spec = tiny_vit_spec()
    samples = tiny_index.samples("train")
    store = DecodedImages.build_or_open(tmp_path, tiny_index.root, samples, spec, num_workers=0)
    images, _ = next(store.batches(torch.arange(len(samples)), 64, drop_last=False, device=CPU))
    plain = DeviceAugment(spec, train=False, device=CPU)(images)
    torch.manual_seed(0)
    augmented = DeviceAugment(spec, train=True, device=CPU)(images)
    assert augmented.shape == plain.shape
    same = [torch.equal(a, p) for a, p in zip(augmented, plain)]
    flipped = [torch.equal(a, p.flip(-1)) or torch.equal(a, p.flip(-2)) or torch.equal(a, p.flip(-1).flip(-2))
               for a, p in zip(augmented, plain)]
    assert any(same) and any(flipped) and not all(same)


def test_full_fine_tune_on_decoded_images_is_deterministic(tmp_path, tiny_index):
    params = tiny_params(freeze="none", epochs=2, image_source="decoded")
    results = []
    for run in ("a", "b"):
        out = tmp_path / run
        metrics = run_training(params, tiny_index, train_outputs(out))
        assert metrics["engine"] == "images"
        results.append((live_files(out), (out / "model.safetensors").read_bytes()))
    assert results[0] == results[1]


def test_a_damaged_store_is_decoded_again(tmp_path, tiny_index, caplog):
    spec = tiny_vit_spec()
    samples = tiny_index.samples("valid")
    DecodedImages.build_or_open(tmp_path, tiny_index.root, samples, spec, num_workers=0)
    path = next(tmp_path.glob("*.npy"))
    good = path.read_bytes()
    for damage in (good[:100], b"not an npy file", good[: len(good) // 2]):
        path.write_bytes(damage)
        store = DecodedImages.build_or_open(tmp_path, tiny_index.root, samples, spec, num_workers=0)
        assert len(store) == len(samples) and path.read_bytes() == good
    assert "decoding again" in caplog.text


def test_prefetched_batches_are_the_gathered_rows_in_order_whatever_the_batch_size(tmp_path, tiny_index):
    spec = tiny_vit_spec()
    samples = tiny_index.samples("train")
    store = DecodedImages.build_or_open(tmp_path, tiny_index.root, samples, spec, num_workers=0)
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(3))
    for batch_size, drop_last in ((7, False), (7, True), (64, False), (1, False)):
        got = list(store.batches(order, batch_size, drop_last=drop_last, device=CPU))
        starts = [s for s in range(0, len(order), batch_size) if not drop_last or len(order) - s >= batch_size]
        assert len(got) == len(starts)
        for (images, labels), start in zip(got, starts):
            rows = torch.sort(order[start:start + batch_size]).values  # each batch read in file order
            assert torch.equal(images, torch.from_numpy(store.array[rows.numpy()]))
            assert torch.equal(labels, store.labels[rows])
    early = store.batches(order, 4, drop_last=False, device=CPU)
    next(early)
    early.close()  # a consumer that stops early (an exception in the step) stops the thread's work


def test_a_failing_prefetch_raises_in_the_consumer_in_order():
    from vitpipe.train.decoded import prefetched

    def load(i: int) -> int:
        if i == 3:
            raise ValueError("item 3")
        return i * 10

    got = []
    try:
        for value in prefetched(load, list(range(6))):
            got.append(value)
    except ValueError as exc:
        assert str(exc) == "item 3"
    assert got == [0, 10, 20]
