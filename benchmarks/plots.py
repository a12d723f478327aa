"""Plots for docs/benchmarks.md from the JSON files the benchmarks wrote (results/*.json).

python benchmarks/plots.py
"""

from __future__ import annotations

import json

import common

DOCS = common.REPO / "docs"


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    DOCS.mkdir(exist_ok=True)
    for path in sorted(common.RESULTS.glob("scale-*.json")):
        data = json.loads(path.read_text())
        fig, ax = plt.subplots(figsize=(6, 4))
        for label in dict.fromkeys(r["filter"] for r in data["results"]):
            rows = [r for r in data["results"] if r["filter"] == label and r["search"] == "hnsw"]
            ax.plot(
                [r["p50_ms"] for r in rows],
                [r["recall@10"] for r in rows],
                marker="o",
                label=f"filter: {label}",
            )
            for r in rows:
                ax.annotate(
                    f"ef={r['ef_search']}",
                    (r["p50_ms"], r["recall@10"]),
                    fontsize=7,
                    xytext=(4, -8),
                    textcoords="offset points",
                )
        ax.set_xlabel("p50 latency of similar_products (ms)")
        ax.set_ylabel("recall@10 vs exact")
        hnsw = data.get("hnsw") or {}
        graph = (
            f"m={hnsw.get('M')}, ef_construction={hnsw.get('EF_CONSTRUCTION')}"
            if isinstance(hnsw, dict)
            else hnsw.replace("'", "")
        )
        memory = f", shared_buffers {data['shared_buffers']}" if "shared_buffers" in data else ""
        ax.set_title(f"HNSW {graph}, {data['products']:,} products{memory}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        out = DOCS / f"{path.stem}-recall-latency.png"
        fig.savefig(out, dpi=120)
        print(f"wrote {out.relative_to(common.REPO)}")
    throughput = common.RESULTS / "throughput.json"
    if throughput.exists():
        data = json.loads(throughput.read_text())
        runtimes = sorted(
            {r["runtime"] for r in data["results"]},
            key=[r["runtime"] for r in data["results"]].index,
        )
        batches = sorted({r["batch"] for r in data["results"]})
        fig, ax = plt.subplots(figsize=(6, 4))
        width = 0.8 / len(runtimes)
        for i, runtime in enumerate(runtimes):
            rows = {r["batch"]: r for r in data["results"] if r["runtime"] == runtime}
            ax.bar(
                [b + i * width for b in range(len(batches))],
                [rows[b]["end_to_end_images_per_s"] for b in batches],
                width,
                label=runtime,
            )
        ax.set_xticks(
            [b + width * (len(runtimes) - 1) / 2 for b in range(len(batches))],
            [f"batch {b}" for b in batches],
        )
        ax.set_ylabel("images / s, end to end (decode + model)")
        ax.set_title(f"{data['model']}, {data['threads']} threads")
        ax.legend()
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        out = DOCS / "throughput.png"
        fig.savefig(out, dpi=120)
        print(f"wrote {out.relative_to(common.REPO)}")


if __name__ == "__main__":
    main()
