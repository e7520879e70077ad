"""The figure of docs/results/quality.md from docs/results/quality/*.json: python scripts/plot_quality.py"""
import json, glob
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
rows = [json.load(open(f)) for f in sorted(glob.glob("docs/results/quality/*.json"))]
order = ["unet-eps", "unet-v", "unet-flow", "dit-eps", "dit-flow"]
rows = sorted(rows, key=lambda r: order.index(r["variant"]))
fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
names = [r["variant"] for r in rows]
colors = ["#4c72b0" if n.startswith("unet") else "#dd8452" for n in names]
axes[0].bar(names, [r["metrics"]["FD-EffLite0"] for r in rows], color=colors)
axes[0].set_title("FD-EffLite0 (lower is better)")
axes[1].scatter([r["metrics"]["Recall-EffLite0"] for r in rows], [r["metrics"]["Precision-EffLite0"] for r in rows],
                c=colors)
for r in rows:
    axes[1].annotate(r["variant"], (r["metrics"]["Recall-EffLite0"], r["metrics"]["Precision-EffLite0"]), fontsize=8)
axes[1].set_xlabel("recall"); axes[1].set_ylabel("precision"); axes[1].set_title("precision / recall")
axes[2].bar(names, [r["intended_class_accuracy"] for r in rows], color=colors)
axes[2].axhline(rows[0]["classifier_test_accuracy"], color="gray", ls="--", lw=1, label="classifier on real test")
axes[2].set_ylim(0.85, 0.95); axes[2].set_title("intended-class accuracy"); axes[2].legend(fontsize=7)
for ax in (axes[0], axes[2]):
    ax.tick_params(axis="x", rotation=30, labelsize=8)
fig.suptitle("Fashion-MNIST 32², class-conditional, 1.75 min of H200 training each, 2,000 samples", fontsize=9)
fig.tight_layout()
fig.savefig("docs/results/quality/quality.png", dpi=110)
