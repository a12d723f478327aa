"""Build shop_demo/demo_data/ from a folder in the Grocery Store Dataset layout.

Copies each product's studio image and description and a few in-store photos from the train
split (evenly spaced: consecutive photos are near-duplicates), and writes catalog.json with
invented but plausible prices. The result is committed so the demo runs without the dataset.

    python scripts/make_demo_data.py ../shared/data/grocery --photos 5
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import shutil
from collections import defaultdict
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "shop_demo" / "demo_data"

# Price ranges (EUR) by top-level group; each product gets a stable price in its range.
PRICES = {"Fruit": (0.89, 3.49), "Vegetables": (0.69, 2.99), "Packages": (0.99, 2.79)}


def price(name: str, group: str) -> str:
    low, high = PRICES.get(group, (0.99, 2.99))
    step = int(hashlib.sha256(name.encode()).hexdigest(), 16) % 1000 / 999
    return f"{round(low + (high - low) * step, 1) - 0.01:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", type=Path, help="grocery data folder (classes.csv, train.txt)")
    parser.add_argument("--photos", type=int, default=5, help="in-store photos per product")
    args = parser.parse_args()

    photos: dict[str, list[str]] = defaultdict(list)
    for line in (args.data / "train.txt").read_text().splitlines():
        path, fine, _ = (part.strip() for part in line.split(","))
        photos[fine].append(path)

    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "images").mkdir(parents=True)
    shutil.copy(args.data / "LICENSE", OUT / "LICENSE")
    products = []
    with open(args.data / "classes.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            name, fine = row["Class Name (str)"], row["Class ID (int)"]
            iconic = row["Iconic Image Path (str)"].lstrip("/")
            group = iconic.split("/")[1]
            description = (
                (args.data / row["Product Description Path (str)"].lstrip("/")).read_text().strip()
            )
            own = photos[fine]
            chosen = [
                own[int(i * len(own) / args.photos)] for i in range(min(args.photos, len(own)))
            ]
            folder = OUT / "images" / name
            folder.mkdir()
            shutil.copy(args.data / iconic, folder / "studio.jpg")
            gallery = []
            for index, path in enumerate(chosen):
                target = folder / f"photo-{index + 1}.jpg"
                shutil.copy(args.data / path, target)
                gallery.append(str(target.relative_to(OUT)))
            products.append(
                {
                    "name": name.replace("-", " "),
                    "slug": name.lower(),
                    "class": name,
                    "category": row["Coarse Class Name (str)"].replace("-", " "),
                    "group": group,
                    "description": description,
                    "price": price(name, group),
                    "image": str((folder / "studio.jpg").relative_to(OUT)),
                    "gallery": gallery,
                }
            )
    (OUT / "catalog.json").write_text(json.dumps(products, indent=1, ensure_ascii=False) + "\n")
    (OUT / "README.md").write_text(
        "# Demo catalogue images\n\n"
        "From the Grocery Store Dataset by Marcus Klasson, Cheng Zhang and Hedvig Kjellström,\n"
        '"A Hierarchical Grocery Store Image Dataset with Visual and Semantic Labels" (WACV 2019),\n'
        "MIT License (see LICENSE in this folder). Per product: the studio (iconic) image, its\n"
        f"description, and {args.photos} in-store photos from the train split. Prices are invented.\n"
        "Made by scripts/make_demo_data.py.\n"
    )
    print(f"{len(products)} products written to {OUT}")


if __name__ == "__main__":
    main()
