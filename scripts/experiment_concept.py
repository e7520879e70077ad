"""A new concept for the emoji text model: ≤ 20 Twemoji images under a rare token, learned DreamBooth-style.

The base model is the text-conditional LDM of ``experiment_emoji_text.py`` (Fluent Emoji 3D at 64², frozen
MiniLM per-token states as cross-attention context), here trained on all 3,374 Fluent emoji (no held-out split:
"rocket" and "banana" are held out there). The concept is the *Twemoji look*: 20 Twemoji images, none of an object
that the test prompts name, each captioned ``"<token> <its emoji name>"`` ("sks dog face"). The concept run is a
full fine-tune of the UNet from the base (``train.init_from``; ``--lora-rank`` trains LoRA adapters instead) with
prior preservation: every step mixes the concept images (``--concept-share`` of the batch, default half) and real
Fluent images under their own names, the Fluent images of the 20 concept names among them ("dog face" stays Fluent while "sks dog face"
turns Twemoji). The test prompts' own Fluent images are left out of that prior, so keeping their look is not
rehearsed.

Why not ``dreambooth:`` of the diffusion trainer: it gives every image one prompt ("a photo of sks dog") and makes
its prior images from one class prompt, which fits one subject; a style over 20 different subjects needs each
image's own name beside the token, and its class (the Fluent set) is at hand as real images. MiniLM is frozen and
gets no new vocabulary entry: the rare word is split into word pieces ("sks" → "sk", "##s") that the fine-tuned
UNet learns to read, as DreamBooth's rare token is.

Steps (the GPU machine has no network and takes 64 MiB of inputs per call):

``prepare --to DIR`` (here): Fluent Emoji 3D and Twemoji at 64² as the loader gives them (RGB on white, lossless
WebP) under ``DIR/data``, the chosen concept images in ``DIR/concept.json``, the MiniLM states of every prompt
(``DIR/prompts.safetensors``: MiniLM's weights do not fit), LPIPS-AlexNet and EfficientNet-Lite0 (float16) under
``DIR/assets`` for ``device_assets.py unpack``.

``run --carry DIR --out OUT`` (GPU): the first stage (``fluent-emoji-64-kl-f4``, LPIPS-AlexNet as its perceptual
loss: VGG16's weights would not fit the transfer) and the base (``fluent-emoji-64-text``), or ``--base MODEL_DIR``;
the test objects: the ``--objects`` of the 16 candidates (``OBJECTS``) that the base draws best, chosen from its
plain-prompt samples before any concept training (composition cannot show on an object the base cannot draw); the
concept run, with checkpoints at about ``--points`` evenly spaced steps; for the base and each checkpoint the
same samples (same prompts, same seeds) of ``"<token> X"`` and of the plain ``"X"`` for the test objects X. Writes
to OUT (after every stage, so a call cut short keeps what it measured):

- ``base.png``, ``adapted.png``: rows = prompts (``"<token> X"`` then ``"X"``), columns = seeds;
- ``checkpoints.png``: rows = prompts, columns = base, then each checkpoint (first seed);
- ``concept-images.png``: the training images; ``results.json``: settings, images, timings, scores.

Scores (EfficientNet-Lite0 pooled features of the samples, ``--per-prompt`` per prompt):

- ``twemoji_probability``: a linear probe (``LinearProbe``) fitted on real Fluent vs real Twemoji images (the
  concept images left out; its accuracy on held-out real images is reported) — how Twemoji-like a group of
  samples looks;
- ``fd_fluent`` / ``fd_twemoji``: FD-EffLite0 of the group against all Fluent / all Twemoji images (biased by the
  small group size; compare across rows only);
- ``object_accuracy``: each sample's nearest neighbour (cosine, centred features) among the Fluent and the Twemoji
  image of every test object and the concept images; correct when it is an image of the prompt's object (chance
  1 / objects), ``copy_rate`` when it is a concept training image (memorisation instead of composition);
- ``lpips_to_base`` (plain prompts): LPIPS-AlexNet between the adapted and the base model's sample of the same
  prompt and seed, beside ``lpips_other_seed``, the base's distance between two seeds of a prompt (what "another
  image" means).

    python scripts/experiment_concept.py prepare --to .carry/concept    # here: 51 MiB (states 18, Fluent 12,
                                                                        # EffLite0 9, Twemoji 8, LPIPS-alex 5)
    tar czf .carry/tar/concept.tar.gz -C .carry concept    # one file: the 64 MiB carry counts disk use
    # GPU call from the repository root (carry the tar), about 8.5 minutes with these settings:
    export LDMKIT_HOME=/tmp/ldmkit PYTHONPATH=$PWD/src:/tmp/site:$PWD/scripts PYTHONUNBUFFERED=1
    mkdir -p /tmp/cc && tar xzf .carry/tar/concept.tar.gz -C /tmp/cc
    python3 scripts/device_assets.py unpack /tmp/cc/concept/assets
    python3 scripts/experiment_concept.py run --carry /tmp/cc/concept --out $OUT \
        --ae-minutes 1.25 --base-minutes 4.5 --concept-minutes 1.0 --checkpoint-every 75
    python scripts/experiment_concept.py run --tiny --out /tmp/concept    # CPU smoke test (~20-80 s)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

TOKEN = "sks"
#: The candidate test objects (emoji of both sets). "<token> X" must compose the concept with X, and "X" must keep
#: its Fluent look. A model that cannot draw X cannot show either, so the run tests the ``--objects`` candidates
#: that the base draws best (its plain-prompt object accuracy among all candidates), chosen before any concept
#: training.
OBJECTS = ("red apple", "rocket", "ghost", "sunflower", "snowman", "cat face", "fire", "skull", "panda face",
           "pig face", "octopus", "watermelon", "cactus", "christmas tree", "lemon", "doughnut")
#: The concept images (Twemoji emoji names); none is one of OBJECTS or shares a word with one other than GENERIC.
CONCEPT_NAMES = ("grinning face", "face with tears of joy", "smiling face with heart-shaped eyes", "dog face",
                 "fox face", "frog face", "penguin", "butterfly", "banana", "strawberry", "carrot", "hamburger",
                 "birthday cake", "soccer ball", "guitar", "automobile", "umbrella", "crown", "rainbow",
                 "hot beverage")
GENERIC = {"face", "with", "of", "and", "the", "a"}
MAX_CONCEPT_IMAGES = 20
GRID_SEEDS = 6
SAMPLE_SEED = 10_000  # metric samples: sample i gets seed SAMPLE_SEED + i, the same for every model
QUIET = ["train.progress=false", "train.log_every=100", "train.image_every=0"]
#: Tiny networks for --tiny (CPU smoke test).
TINY_AE = ["model.base_channels=8", "model.channel_mult=[1,2]", "model.num_res_blocks=1", "train.batch_size=4",
           "train.steps=2", "train.device=cpu", "loss.disc_start=100000"]
TINY_UNET = ["unet.model_channels=16", "unet.channel_mult=[1,2]", "unet.num_res_blocks=1",
             "unet.attention_resolutions=[2]", "unet.num_head_channels=8", "train.batch_size=8", "train.device=cpu"]


# --------------------------------------------------------------------------------------------- data sets


def data_config(emoji_set: str, path: Path | None = None):
    """The 64² emoji data of the text model's preset, all emoji (no held-out split), from ``path`` if given."""
    from ldmkit.config import load_config
    from ldmkit.data import DataConfig

    cfg = load_config(DataConfig, "fluent-emoji-64", [], group="data")
    return dataclasses.replace(cfg, emoji_set=emoji_set, val_fraction=0.0, path=str(path) if path else None)


def emoji_set(name: str, path: Path | None = None):
    from ldmkit.data import build_dataset

    return build_dataset(data_config(name, path), split="train")


def words(name: str) -> set[str]:
    return set(name.replace(":", " ").replace(",", " ").split()) - GENERIC


def check_disjoint(concept: list[str], objects: tuple[str, ...]) -> None:
    for name in concept:
        for obj in objects:
            if name == obj or words(name) & words(obj):
                raise SystemExit(f"concept image '{name}' shares a word with test object '{obj}'")


def pick_concept(twemoji, fluent_captions: set[str], count: int, objects: tuple[str, ...]) -> list[int]:
    """Indices of the concept images in ``twemoji``: CONCEPT_NAMES, then (where a set lacks some) the first other
    emoji that the Fluent set also has and that share no word with the objects."""
    by_caption = {twemoji.caption(i): i for i in range(len(twemoji))}
    chosen = [by_caption[n] for n in CONCEPT_NAMES if n in by_caption and n in fluent_captions][:count]
    for i in range(len(twemoji)):
        if len(chosen) >= count:
            break
        name = twemoji.caption(i)
        if i not in chosen and name in fluent_captions and ":" not in name and not any(
                name == o or words(name) & words(o) for o in objects):
            chosen.append(i)
    check_disjoint([twemoji.caption(i) for i in chosen], objects)
    return chosen


def write_set(name: str, dataset, target: Path, indices: list[int]) -> dict[int, str]:
    """Items ``indices`` of an emoji data set as the loader gives them (64², RGB on white, lossless WebP: smaller
    than Twemoji's own RGBA PNGs), with the fields of the set's emoji.json that the loader reads. Returns the file
    names."""
    from PIL import Image

    from experiment_emoji_text import to_unit_uint8
    from ldmkit.data.emoji import emoji_roots

    shutil.rmtree(target, ignore_errors=True)
    (target / "images").mkdir(parents=True)
    keep = ("unified", "non_qualified", "name", "short_name", "short_names", "category", "subcategory")
    (_, root), = emoji_roots(dataset.cfg)
    entries = json.loads((root / "emoji.json").read_text())
    slim = [{k: e[k] for k in keep if k in e} | ({"skin_variations": {
        tone: {k: v[k] for k in ("unified", "non_qualified") if k in v} for tone, v in e["skin_variations"].items()}}
        if e.get("skin_variations") else {}) for e in entries]
    (target / "emoji.json").write_text(json.dumps(slim, separators=(",", ":")))
    files = {}
    for i in indices:
        files[i] = Path(dataset.entries[i].path).stem + ".webp"
        pixels = to_unit_uint8(dataset[i]["image"]).permute(1, 2, 0).numpy()  # [64, 64, 3]
        Image.fromarray(pixels).save(target / "images" / files[i], lossless=True)
    copy = emoji_set(name, target)  # the carried copy must load to exactly the same tensors
    assert len(copy) == len(indices), f"{name}: {len(copy)} of {len(indices)} images load from {target}"
    for k in range(0, len(indices), max(1, len(indices) // 20)):
        assert torch.equal(copy[k]["image"], dataset[indices[k]]["image"]), f"{name}: image {k} differs"
    return files


def prepare(to: Path, tiny: bool, count: int, token: str, objects: tuple[str, ...]) -> None:
    from device_assets import pack  # scripts/ is on sys.path when a script runs

    from ldmkit.conditioning import ConditionerConfig, build_conditioner
    from ldmkit.conditioning.prompt_states import write_prompt_states

    fluent, twemoji = emoji_set("fluent-emoji-3d"), emoji_set("twemoji")
    fluent_captions = {fluent.caption(i) for i in range(len(fluent))}
    concept = pick_concept(twemoji, fluent_captions, count, objects)
    concept_names = [twemoji.caption(i) for i in concept]
    fluent_keep, twemoji_keep = list(range(len(fluent))), list(range(len(twemoji)))
    if tiny:  # the objects, the concept names and a few others: enough for every step of the run
        wanted = set(objects) | set(concept_names)
        fluent_keep = sorted({i for i in fluent_keep if fluent.caption(i) in wanted} | set(range(0, len(fluent), 200)))
        twemoji_keep = sorted({i for i in twemoji_keep if twemoji.caption(i) in wanted} | set(concept)
                              | set(range(0, len(twemoji), 200)))
    missing = [o for o in objects if o not in fluent_captions or o not in {twemoji.caption(i) for i in twemoji_keep}]
    if missing:
        raise SystemExit(f"test objects {missing} are not emoji names of both sets")
    write_set("fluent-emoji-3d", fluent, to / "data" / "fluent-emoji-3d", fluent_keep)
    files = write_set("twemoji", twemoji, to / "data" / "twemoji", twemoji_keep)
    record = {"token": token, "objects": list(objects),
              "concept_images": [{"name": twemoji.caption(i), "file": files[i]} for i in concept]}
    (to / "concept.json").write_text(json.dumps(record, indent=1))
    prompts = [fluent.caption(i) for i in fluent_keep] + [f"{token} {n}" for n in concept_names]
    prompts += [*objects, *(f"{token} {o}" for o in objects)]
    encoder = build_conditioner(ConditionerConfig(kind="pretrained_text", drop_prob=0.0))
    write_prompt_states(to / "prompts.safetensors", prompts, encoder, progress=not tiny)
    pack(["lpips"], to / "assets", ["vgg16.safetensors"])
    pack(["efficientnet-lite0"], to / "assets", [])
    size = sum(p.stat().st_size for p in to.rglob("*") if p.is_file())
    print(f"prepared {to}: {size / 2**20:.1f} MiB; concept images: {', '.join(concept_names)}")


# --------------------------------------------------------------------------------------------- training


def train_first_stage(work: Path, carry: Path, minutes: float, tiny: bool, workers: int) -> Path:
    from ldmkit.cli.main import main as ldm

    run = work / "ae"
    budget = [] if tiny else [f"train.max_minutes={minutes}", "train.steps=100000", "train.checkpoint_every=100000"]
    if ldm(["train", "autoencoder", "--config", "fluent-emoji-64-kl-f4", f"train.out={run}",
            f"data.path={carry / 'data' / 'fluent-emoji-3d'}", "loss.perceptual_net=alex", *budget, *QUIET,
            f"train.num_workers={workers}", *(TINY_AE if tiny else [])]):
        raise SystemExit("autoencoder training failed")
    return run / "model"


def batch_size(run: Path) -> int:
    import yaml

    return int(yaml.safe_load((run / "config.yaml").read_text())["train"]["batch_size"])


def last_step(run: Path) -> int:
    return max(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("step-*"))


def checkpoints(run: Path) -> list[tuple[int, Path]]:
    found = [(int(p.name.split("-")[1]), p / "weights") for p in (run / "checkpoints").glob("step-*")
             if (p / "MANIFEST.json").is_file()]
    return sorted(found)


def write_concept_data(target: Path, carry: Path, record: dict, prior: int, share: float = 0.5, seed: int = 0) -> dict:
    """The concept run's image folder: ``prior`` real Fluent images with their own names (the Fluent images of the
    concept names among them, those of the test objects left out), and each concept image with the caption
    "<token> <name>", repeated so that about ``share`` of the files are concept images: at 0.5 a step's batch is
    about half concept, half prior (DreamBooth's prior-preservation loss with weight 1, up to a factor ½); lower
    shares show each concept image less often, against memorising it."""
    fluent = emoji_set("fluent-emoji-3d", carry / "data" / "fluent-emoji-3d")
    shutil.rmtree(target, ignore_errors=True)
    (target / "concept").mkdir(parents=True)
    (target / "prior").mkdir()
    names = {item["name"] for item in record["concept_images"]}
    allowed = [i for i in range(len(fluent)) if fluent.caption(i) not in record["objects"]]
    first = [i for i in allowed if fluent.caption(i) in names]
    rest = [i for i in allowed if fluent.caption(i) not in names]
    order = torch.randperm(len(rest), generator=torch.Generator().manual_seed(seed)).tolist()
    chosen = (first + [rest[k] for k in order])[:prior] if prior else []
    for i in chosen:
        source = Path(fluent.entries[i].path)
        shutil.copyfile(source, target / "prior" / source.name)
        (target / "prior" / source.name).with_suffix(".txt").write_text(fluent.caption(i))
    concept = record["concept_images"]
    repeats = max(1, round(share / (1 - share) * len(chosen) / len(concept)))
    for item in concept:
        source = carry / "data" / "twemoji" / "images" / item["file"]
        for r in range(repeats):
            stem = target / "concept" / f"{Path(item['file']).stem}-{r:03d}"
            shutil.copyfile(source, stem.with_suffix(source.suffix))
            stem.with_suffix(".txt").write_text(f"{record['token']} {item['name']}")
    return {"concept_files": len(concept) * repeats, "repeats_per_concept_image": repeats,
            "prior_images": len(chosen), "prior_with_concept_names": sum(1 for i in chosen if i in set(first))}


# --------------------------------------------------------------------------------------------- sampling, scores


def pipeline_of(weights: Path):
    """The model a model directory holds, with the adapter a LoRA run writes beside its base."""
    from ldmkit.adapters import find_adapters
    from ldmkit.pipelines import load_pipeline

    pipe = load_pipeline(weights)
    for adapter in find_adapters(weights).values():
        pipe.load_lora(adapter)
    return pipe


@torch.no_grad()
def sample(pipe, prompts: list[str], seeds: int, per_prompt: int, options: dict) -> dict[str, torch.Tensor]:
    """``grid``: [P, seeds, 3, H, W] (prompt p, seed column s: seed 1000 s + p); ``samples``: [P * per_prompt, …],
    prompt p's block first, sample i with seed SAMPLE_SEED + i. All in [-1, 1] on the CPU."""
    rows = [pipe(prompt=prompts, seed=1000 * s, **options).cpu() for s in range(seeds)]
    listed = [p for p in prompts for _ in range(per_prompt)]
    samples = torch.cat([pipe(prompt=listed[lo:lo + 512], seed=SAMPLE_SEED + lo, batch_size=512, **options).cpu()
                         for lo in range(0, len(listed), 512)])
    return {"grid": torch.stack(rows, dim=1), "samples": samples}


def save_concept_images(carry: Path, record: dict, path: Path) -> None:
    from ldmkit.io.images import make_grid, save_grid, to_unit

    twemoji = emoji_set("twemoji", carry / "data" / "twemoji")
    index = {Path(e.path).name: i for i, e in enumerate(twemoji.entries)}
    images = torch.stack([twemoji[index[item["file"]]]["image"] for item in record["concept_images"]])
    save_grid(make_grid(to_unit(images), nrow=10), path)


def save_rows(images: torch.Tensor, path: Path) -> None:
    """[rows, columns, 3, H, W] in [-1, 1] → one PNG, a row per prompt."""
    from ldmkit.io.images import make_grid, save_grid, to_unit

    save_grid(make_grid(to_unit(images.flatten(0, 1)), nrow=images.shape[1]), path)


class Scorer:
    """Feature-space scores of sample groups against real Fluent and Twemoji images (see the module's doc)."""

    def __init__(self, carry: Path, record: dict, device: torch.device, batch: int = 256):
        from ldmkit.autoencoders.lpips import LPIPS
        from ldmkit.evaluation import build_feature_extractor, mean_and_covariance

        self.device, self.batch = device, batch
        self.extractor = build_feature_extractor("efflite0", device=device)
        self.lpips = LPIPS.from_assets("alex").to(device)
        fluent = emoji_set("fluent-emoji-3d", carry / "data" / "fluent-emoji-3d")
        twemoji = emoji_set("twemoji", carry / "data" / "twemoji")
        concept_files = {Path(item["file"]).stem for item in record["concept_images"]}
        self.is_concept = [Path(e.path).stem in concept_files for e in twemoji.entries]
        self.f_features = self.features(torch.stack([fluent[i]["image"] for i in range(len(fluent))]))
        self.t_features = self.features(torch.stack([twemoji[i]["image"] for i in range(len(twemoji))]))
        self.fluent, self.twemoji = self.f_features, self.t_features[[not c for c in self.is_concept]]
        self.centre = torch.cat([self.fluent, self.twemoji]).mean(0)
        self.fluent_stats, self.twemoji_stats = mean_and_covariance(self.fluent), mean_and_covariance(self.twemoji)
        self._fit_probe()
        self.f_index = {fluent.caption(i): i for i in range(len(fluent))}
        self.t_index = {twemoji.caption(i): i for i in range(len(twemoji))}
        self.use_objects(record["objects"])

    def use_objects(self, objects: list[str]) -> None:
        """Score against these objects: the nearest-neighbour references are the Fluent and the Twemoji image of
        each, and the concept images (chance of ``object_accuracy``: 1 / len(objects))."""
        self.objects = list(objects)
        refs = [self.f_features[self.f_index[o]] for o in objects]
        refs += [self.t_features[self.t_index[o]] for o in objects]
        refs += [self.t_features[i] for i, c in enumerate(self.is_concept) if c]
        self.ref_labels = list(range(len(objects))) * 2 + [-1] * sum(self.is_concept)  # -1: a concept training image
        self.refs = self._unit(torch.stack(refs))
        # What the nearest-neighbour test can see at all: each real Fluent object image against the same
        # references less its own Fluent image (so only its Twemoji twin, the other objects and the concept images).
        hits = 0
        for k, o in enumerate(objects):
            similarity = self._unit(self.f_features[self.f_index[o]][None]) @ self.refs.T
            similarity[0, k] = -2.0
            hits += int(self.ref_labels[int(similarity.argmax())] == k)
        self.real_cross_style_accuracy = hits / len(objects)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.extractor(images[lo:lo + self.batch].to(self.device)).float().cpu()
                          for lo in range(0, len(images), self.batch)])

    def _unit(self, features: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(features - self.centre, dim=1)

    def _fit_probe(self, steps: int = 500) -> None:
        """A linear probe Fluent (0) vs Twemoji (1), fitted on half of the real images, its accuracy measured on
        the other half."""
        from ldmkit.evaluation import LinearProbe

        x = torch.cat([self.fluent, self.twemoji])
        y = torch.cat([torch.zeros(len(self.fluent)), torch.ones(len(self.twemoji))]).long()
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        fit, held = order[: len(x) // 2], order[len(x) // 2:]
        self.probe = LinearProbe(x[fit], y[fit], classes=2, steps=steps)
        self.probe_accuracy = self.probe.accuracy(x[held], y[held])

    def twemoji_probability(self, features: torch.Tensor) -> torch.Tensor:
        return self.probe.probabilities(features)[:, 1]

    def _look(self, features: torch.Tensor) -> dict:
        from ldmkit.evaluation import frechet_distance, mean_and_covariance

        stats = mean_and_covariance(features)
        return {"twemoji_probability": float(self.twemoji_probability(features).mean()),
                "fd_fluent": float(frechet_distance(*stats, *self.fluent_stats)),
                "fd_twemoji": float(frechet_distance(*stats, *self.twemoji_stats))}

    def real_groups(self, n: int) -> dict:
        """What a group of ``n`` real Fluent or real Twemoji images scores (drawn from the references, so their FD
        is a little optimistic): the two ends between which a group of samples lies."""
        generator = torch.Generator().manual_seed(1)
        return {name: self._look(features[torch.randperm(len(features), generator=generator)[:n]])
                for name, features in (("fluent", self.fluent), ("twemoji", self.twemoji))}

    def group(self, images: torch.Tensor, labels: list[int]) -> dict:
        """Scores of one group of samples; ``labels[i]``: the object index of sample i's prompt."""
        features = self.features(images)
        nearest = [self.ref_labels[j] for j in (self._unit(features) @ self.refs.T).argmax(1).tolist()]
        per_object = {}
        for k in sorted(set(labels)):
            mine = [n for n, label in zip(nearest, labels) if label == k]
            per_object[self.objects[k]] = sum(n == k for n in mine) / len(mine)
        return {**self._look(features),
                "object_accuracy": sum(n == k for n, k in zip(nearest, labels)) / len(labels),
                "object_accuracy_per_object": per_object,
                "copy_rate": sum(n == -1 for n in nearest) / len(labels)}

    @torch.no_grad()
    def lpips_pairs(self, a: torch.Tensor, b: torch.Tensor) -> float:
        return float(torch.cat([self.lpips(a[lo:lo + self.batch].to(self.device), b[lo:lo + self.batch]
                                           .to(self.device)).float().cpu() for lo in range(0, len(a), self.batch)])
                     .mean())


@torch.no_grad()
def choose_objects(pipe, scorer: Scorer, candidates: list[str], count: int, per_prompt: int, options: dict) -> dict:
    """The ``count`` candidates whose plain prompts the base draws best: object accuracy of ``per_prompt`` samples
    each against the references of all candidates (ties keep the candidates' order). Its own seeds (SAMPLE_SEED
    offset by a million), so the scored samples are not the ones that chose."""
    listed = [c for c in candidates for _ in range(per_prompt)]
    samples = torch.cat([pipe(prompt=listed[lo:lo + 512], seed=SAMPLE_SEED + 10**6 + lo, batch_size=512, **options)
                         .cpu() for lo in range(0, len(listed), 512)])
    scorer.use_objects(candidates)
    scores = scorer.group(samples, [k for k in range(len(candidates)) for _ in range(per_prompt)])
    accuracy = scores["object_accuracy_per_object"]
    ranked = sorted(candidates, key=lambda c: -accuracy[c])  # stable: ties in the candidates' order
    return {"chosen": ranked[:count], "accuracy_among_candidates": accuracy, "per_prompt": per_prompt,
            "chance": 1 / len(candidates), "copy_rate": scores["copy_rate"]}


def score_model(scorer: Scorer, samples: torch.Tensor, base_samples: torch.Tensor, objects: list[str],
                per_prompt: int) -> dict:
    """Samples (and the base's) are [2 · objects · per_prompt]: the "<token> X" blocks, then the "X" blocks."""
    half = len(objects) * per_prompt
    labels = [k for k in range(len(objects)) for _ in range(per_prompt)]
    token, plain = samples[:half], samples[half:]
    scores = {"token_prompts": scorer.group(token, labels), "plain_prompts": scorer.group(plain, labels)}
    scores["plain_prompts"]["lpips_to_base"] = scorer.lpips_pairs(plain, base_samples[half:])
    return scores


def other_seed_lpips(scorer: Scorer, base_samples: torch.Tensor, objects: list[str], per_prompt: int) -> float:
    """The base's LPIPS between consecutive seeds of one plain prompt (its blocks rolled by one within each)."""
    plain = base_samples[len(objects) * per_prompt:].unflatten(0, (len(objects), per_prompt))
    return scorer.lpips_pairs(plain.flatten(0, 1), plain.roll(1, dims=1).flatten(0, 1))


# --------------------------------------------------------------------------------------------- the run


def run(args: argparse.Namespace) -> None:
    from ldmkit.training.diffusion_task import run_diffusion_training

    carry, out, tiny = args.carry, args.out, args.tiny
    out.mkdir(parents=True, exist_ok=True)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() and not tiny else "cpu")
    record = json.loads((carry / "concept.json").read_text())
    token, candidates = record["token"], record["objects"]
    states = (carry / "prompts.safetensors").resolve()
    workers = 0 if tiny else args.workers
    unet = TINY_UNET if tiny else []
    common = [f"conditioner.pretrained.states_file={states}", *QUIET, f"train.num_workers={workers}", *unet]
    results: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                     "torch": torch.__version__, "settings": {k: str(v) for k, v in vars(args).items()},
                     "token": token, "candidates": candidates,
                     "concept_images": record["concept_images"], "timings": {}, "steps": {}}

    def save() -> None:
        (out / "results.json").write_text(json.dumps(results, indent=2, default=str))

    def timed(name: str, began: float) -> None:
        results["timings"][f"{name}_seconds"] = round(time.perf_counter() - began, 1)
        save()

    # 1. The base model: first stage, then the text LDM on all Fluent emoji (or --base).
    began = time.perf_counter()
    if args.base is not None:
        base_model = args.base
        autoencoder = base_model / "autoencoder"
        results["base"] = {"model": str(base_model)}
    else:
        autoencoder = train_first_stage(work, carry, args.ae_minutes, tiny, workers)
        timed("autoencoder", began)
        results["steps"]["autoencoder"] = last_step(work / "ae")
        began = time.perf_counter()
        budget = ["train.steps=3"] if tiny else [f"train.max_minutes={args.base_minutes}", "train.steps=1000000",
                                                 "train.checkpoint_every=1000000"]
        base_model = run_diffusion_training("fluent-emoji-64-text", [
            f"autoencoder={autoencoder}", f"train.out={work / 'base'}",
            f"data.path={carry / 'data' / 'fluent-emoji-3d'}", "data.val_fraction=0", *budget, *common])
        timed("base", began)
        results["steps"]["base"] = last_step(work / "base")
        results["base"] = {"model": str(base_model), "config": (work / "base" / "config.yaml").read_text()}
    save()

    # 2. The real images' features and probe; the test objects the base draws best; the base's samples and scores.
    began = time.perf_counter()
    options = dict(steps=3 if tiny else args.steps, guidance=args.guidance, sampler="dpm++2m", output="tensor",
                   progress=False)
    per_prompt = 2 if tiny else args.per_prompt
    seeds = 2 if tiny else GRID_SEEDS
    scorer = Scorer(carry, record, device)
    base_pipe = pipeline_of(base_model)
    results["object_choice"] = choose_objects(base_pipe, scorer, candidates, args.objects,
                                              2 if tiny else args.choice_per_prompt, options)
    objects = results["objects"] = results["object_choice"]["chosen"]
    scorer.use_objects(objects)
    prompts = results["prompts"] = [f"{token} {o}" for o in objects] + list(objects)
    save()
    base = sample(base_pipe, prompts, seeds, per_prompt, options)
    save_rows(base["grid"], out / "base.png")
    save_concept_images(carry, record, out / "concept-images.png")
    results["probe_accuracy_on_held_out_real_images"] = scorer.probe_accuracy
    results["real_cross_style_object_accuracy"] = scorer.real_cross_style_accuracy
    results["reference_images"] = {"fluent": len(scorer.fluent), "twemoji_without_concept": len(scorer.twemoji)}
    results["real_groups"] = scorer.real_groups(len(objects) * per_prompt)
    results["scores"] = {"base": score_model(scorer, base["samples"], base["samples"], objects, per_prompt)}
    results["lpips_other_seed"] = other_seed_lpips(scorer, base["samples"], objects, per_prompt)
    timed("base_samples_and_references", began)

    # 3. The concept run from the base.
    began = time.perf_counter()
    results["concept_data"] = write_concept_data(work / "concept-data", carry, record, args.prior_images,
                                                 args.concept_share)
    timed("concept_data", began)
    batch = 8 if tiny else args.batch_size
    if tiny:
        every, budget = 2, ["train.steps=4"]
    else:
        rate = None  # base images per second (setup included): sets the checkpoint spacing
        if "base_seconds" in results["timings"]:
            rate = results["steps"]["base"] * batch_size(work / "base") / results["timings"]["base_seconds"]
        expected = (rate * args.concept_minutes * 60 / batch) if rate else args.points * 100
        every = args.checkpoint_every or max(10, round(expected / args.points))
        budget = [f"train.max_minutes={args.concept_minutes}", "train.steps=1000000"]
    lora = ([f"lora.rank={args.lora_rank}", "lora.targets=[attention,feedforward,projections,convolutions]"]
            if args.lora_rank else [])
    concept_overrides = [
        f"autoencoder={autoencoder}", f"train.init_from={base_model}", f"train.out={work / 'concept'}",
        "data.source=folder", f"data.path={work / 'concept-data'}", "data.label_source=none", "data.val_fraction=0",
        f"train.lr={args.lr or (1e-3 if args.lora_rank else 1e-4)}", f"train.warmup_steps={0 if tiny else 50}",
        f"train.batch_size={batch}",
        f"ema_decay={args.ema_decay}", f"train.checkpoint_every={every}", f"train.keep_every={every}",
        *budget, *common, *lora]
    results["concept_overrides"] = concept_overrides
    results["method"] = (f"{'LoRA rank ' + str(args.lora_rank) if args.lora_rank else 'full fine-tune'} of the UNet "
                         f"from the base (MiniLM frozen), each concept image captioned '{token} <its name>', "
                         f"prior preservation with {results['concept_data']['prior_images']} real Fluent images "
                         "under their own names (the test objects' left out), about "
                         f"{1 - args.concept_share:.0%} of every batch")
    results["concept_checkpoint_every"] = every
    began = time.perf_counter()
    run_diffusion_training("fluent-emoji-64-text", concept_overrides)
    timed("concept", began)
    results["steps"]["concept"] = last_step(work / "concept")
    for name in ("base", "concept"):
        if f"{name}_seconds" in results["timings"]:
            results.setdefault("images_per_second_with_setup", {})[name] = round(
                results["steps"][name] * batch_size(work / name) / results["timings"][f"{name}_seconds"], 1)

    # 4. The same samples of every checkpoint of the concept run, and their scores.
    began = time.perf_counter()
    columns = [base["grid"][:, 0]]
    for step, weights in checkpoints(work / "concept"):
        adapted = sample(pipeline_of(weights), prompts, seeds, per_prompt, options)
        results["scores"][f"concept_step_{step}"] = score_model(scorer, adapted["samples"], base["samples"], objects,
                                                                per_prompt)
        columns.append(adapted["grid"][:, 0])
        save_rows(adapted["grid"], out / "adapted.png")  # the last checkpoint's stays
        save_rows(torch.stack(columns, dim=1), out / "checkpoints.png")
        save()
        print(json.dumps({step: {g: {k: v for k, v in s.items() if k != "object_accuracy_per_object"}
                                 for g, s in results["scores"][f"concept_step_{step}"].items()}}), flush=True)
    timed("concept_samples_and_scores", began)
    print(json.dumps({k: results[k] for k in ("device", "timings", "steps")}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="(here) the data, prompt states and weights the GPU run needs")
    p.add_argument("--to", type=Path, required=True)
    p.add_argument("--tiny", action="store_true", help="a few images of each set only (for the smoke test)")
    p.add_argument("--concept-images", type=int, default=MAX_CONCEPT_IMAGES, choices=range(1, MAX_CONCEPT_IMAGES + 1),
                   metavar="N", help=f"Twemoji images of the concept (at most {MAX_CONCEPT_IMAGES})")
    p.add_argument("--token", default=TOKEN, help="the rare word of the concept")
    r = sub.add_parser("run", help="(GPU) train, sample, score; --tiny: a CPU smoke test of the whole script")
    r.add_argument("--carry", type=Path, help="what prepare wrote (--tiny: made in a temporary folder)")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--work", type=Path, default=None, help="the runs' directory (default /tmp/concept-runs)")
    r.add_argument("--base", type=Path, default=None, help="an emoji text model directory to start from (else the "
                                                           "first stage and the base are trained here)")
    r.add_argument("--ae-minutes", type=float, default=1.25)
    r.add_argument("--base-minutes", type=float, default=4.5)
    r.add_argument("--concept-minutes", type=float, default=1.0)
    r.add_argument("--prior-images", type=int, default=1000, help="real Fluent images of the prior (0: none)")
    r.add_argument("--concept-share", type=float, default=0.5,
                   help="about this share of the concept run's images are concept images, the rest prior (0 < x < 1)")
    r.add_argument("--batch-size", type=int, default=64, help="concept run: images per step (concept and prior)")
    r.add_argument("--lr", type=float, default=None, help="concept run's learning rate (default 1e-4, with LoRA "
                                                          "1e-3)")
    r.add_argument("--ema-decay", type=float, default=0.99, help="concept run's EMA decay")
    r.add_argument("--lora-rank", type=int, default=0, help="LoRA adapters of this rank instead of a full fine-tune")
    r.add_argument("--points", type=int, default=4, help="checkpoints of the concept run to sample, about")
    r.add_argument("--checkpoint-every", type=int, default=0, help="concept run's checkpoint spacing (0: from "
                                                                   "the base's speed and --points)")
    r.add_argument("--per-prompt", type=int, default=32, help="scored samples per prompt")
    r.add_argument("--objects", type=int, default=6, choices=range(2, len(OBJECTS) + 1), metavar="N",
                   help=f"test objects: the N of the {len(OBJECTS)} candidates that the base draws best")
    r.add_argument("--choice-per-prompt", type=int, default=16, help="base samples per candidate, to choose")
    r.add_argument("--steps", type=int, default=25)
    r.add_argument("--guidance", type=float, default=3.0)
    r.add_argument("--workers", type=int, default=8)
    r.add_argument("--tiny", action="store_true", help="tiny networks, a few steps, on the CPU (smoke test)")
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.to, args.tiny, args.concept_images, args.token, OBJECTS)
        return
    if not 0 < args.concept_share < 1:
        parser.error(f"--concept-share {args.concept_share}: give a share strictly between 0 and 1, e.g. 0.2")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        if args.carry is None:
            if not args.tiny:
                parser.error("run needs --carry (what prepare wrote), or --tiny")
            args.carry = Path(scratch) / "carry"
            prepare(args.carry, True, MAX_CONCEPT_IMAGES, TOKEN, OBJECTS)
        if args.work is None:
            args.work = Path(scratch) / "runs" if args.tiny else Path("/tmp/concept-runs")
        run(args)
    print(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
