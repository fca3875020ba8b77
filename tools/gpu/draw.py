#!/usr/bin/env python3
"""Draws vitpipe's synthetic butterflies (the download stage's generator, the same bytes) on every core.

usage: draw.py DEST --classes N --train N [--valid N] [--test N] [--size PX] [--seed S]
"""
import argparse
import time
from pathlib import Path

from vitpipe.download.synthetic import generate
from vitpipe.params import SyntheticParams, usable_cores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("dest", type=Path)
    ap.add_argument("--classes", type=int, default=25)
    ap.add_argument("--train", type=int, required=True)
    ap.add_argument("--valid", type=int, default=10)
    ap.add_argument("--test", type=int, default=10)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    a.dest.mkdir(parents=True)
    start = time.perf_counter()
    generate(a.dest, SyntheticParams(classes=a.classes, train_per_class=a.train, valid_per_class=a.valid,
                                     test_per_class=a.test, image_size=a.size), seed=a.seed, processes=usable_cores())
    images = a.classes * (a.train + a.valid + a.test)
    print(f"draw: {images} images, {a.classes} classes, {a.size} px -> {a.dest} in "  # noqa: T201
          f"{time.perf_counter() - start:.1f} s on {usable_cores()} cores")


if __name__ == "__main__":
    main()
