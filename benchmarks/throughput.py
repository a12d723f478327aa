"""Embedding throughput of the configured model for each runtime the encoder supports, batch
sizes 1, 8 and 32, in one run; the cosine agreement of each runtime's vectors with fp32 torch
on real photos; and the end-to-end rate including file reading, decoding and preprocessing.

    python benchmarks/throughput.py --data ../shared/data/grocery --images 96
"""

from __future__ import annotations

import os
import time

import common


def main() -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument(
        "--images", type=int, default=96, help="real photos to encode per measurement"
    )
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--runtimes", default="torch,torch_bf16,onnx")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--output", default="throughput")
    args = parser.parse_args()

    import sys

    sys.path.insert(0, str(common.REPO))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
    import django
    import numpy as np

    django.setup()
    from visual_search.encoders import TimmEncoder
    from visual_search.images import load_image

    listing = (args.data / "val.txt").read_text().splitlines()
    paths = [args.data / line.split(",")[0].strip() for line in listing if line.strip()]
    step = max(1, len(paths) // args.images)
    paths = paths[::step][: args.images]
    pictures = [load_image(p) for p in paths]
    batches = [int(b) for b in args.batches.split(",")]
    rows, reference = [], None
    for runtime in args.runtimes.split(","):
        encoder = TimmEncoder(
            model=args.model, runtime=runtime, threads=args.threads, batch_size=32
        )
        encoder.encode(pictures[:2])  # load, export (onnx) and warm up
        vectors = encoder.encode(pictures)
        if reference is None:
            reference = vectors
        cosine = np.sum(vectors * reference, axis=1)
        for batch in batches:
            encoder.batch_size = batch
            started = time.perf_counter()
            encoder.encode(pictures)
            model_rate = len(pictures) / (time.perf_counter() - started)
            started = time.perf_counter()
            encoder.encode([load_image(p) for p in paths])  # read + decode + preprocess + model
            e2e_rate = len(paths) / (time.perf_counter() - started)
            row = {
                "runtime": runtime,
                "batch": batch,
                "images_per_s": round(model_rate, 1),
                "end_to_end_images_per_s": round(e2e_rate, 1),
                "cosine_min": float(cosine.min()),
                "cosine_mean": float(cosine.mean()),
            }
            rows.append(row)
            print(common.table([row], list(row)))
    columns = [
        "runtime",
        "batch",
        "images_per_s",
        "end_to_end_images_per_s",
        "cosine_min",
        "cosine_mean",
    ]
    print("\n" + common.table(rows, columns))
    common.save(
        args.output,
        {"model": args.model, "threads": args.threads, "images": len(paths), "results": rows},
    )


if __name__ == "__main__":
    main()
