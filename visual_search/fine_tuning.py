"""Fine-tuning the encoder's last stages on the catalogue's own images, on a CPU, in minutes.

Off-the-shelf ImageNet features do not separate a shop's look-alike products (two cartons of
milk, two kinds of apple); a linear transform of them plateaus (learned whitening: val R@1
0.77). Retraining only the last stages of the backbone goes further while staying cheap: the
frozen early stages run once per training image and view (their feature maps are kept in
memory at half precision), and only the late, low-resolution stages are trained, with a
cosine classifier over the catalogue's products (normalised softmax with one learned proxy
per product). Batch-norm statistics stay frozen: catalogues are small and batches are mixed.
The tail runs in channels-last memory format (on a 2-core Xeon it trains in 0.57x the time of
the default layout) and, while it trains, with each frozen batch norm folded into the
convolution before it (0.85x again); both keep the arithmetic (docs/benchmarks.md). The
training crops are drawn in a worker thread while the trunk runs, and a second model can train
beside the first (``TrainingBeside``), one torch thread each, which makes better use of two
cores than one training on both.

Supported: timm EfficientNet-family models (``conv_stem``, ``bn1``, ``blocks``,
``conv_head``, ``bn2``), which includes the default EfficientNet-Lite0.
"""

from __future__ import annotations

import contextlib
import copy
import io
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from visual_search.exceptions import VisualSearchError

# onnxruntime runs the frozen trunk about 13 % faster in batches of 8-16 images than of 64
# (2 CPU cores; docs/benchmarks.md): smaller activations stay in cache.
TRUNK_BATCH = 16


class FineTuningUnsupported(VisualSearchError):
    """The encoder's model cannot be fine-tuned by this module."""


class TrainingStopped(VisualSearchError):
    """A training was stopped before its last epoch (``TrainingBeside.cancel``)."""


@dataclass(frozen=True)
class FineTuneConfig:
    """Hyper-parameters; the defaults were chosen on the grocery val split (benchmarks)."""

    trained_stages: int = 2  # the last N stages of ``blocks`` (plus the head conv) are trained
    epochs: int = 10
    learning_rate: float = 5e-4
    # Each trained stage before the last learns at this share of the next one's rate
    # (layer-wise decay). 0.1 lifted photo search's R@5 0.01-0.02 but cost R@1 and "not ours"
    # coverage through the pipeline (docs/benchmarks.md, "A lower rate for the earlier stage").
    earlier_stage_rate: float = 1.0
    # Softmax temperature = 1 / scale, on cosine logits. 8 rather than the 12 first chosen on
    # R@1 alone: the same photo search, and photos of products the shop does not sell are less
    # often near one of its products (docs/benchmarks.md, "A softer softmax").
    scale: float = 8.0
    # Subtracted from the cosine of each image's own product while training (CosFace). 0.15
    # helped "not ours" in offline runs but not through the pipeline (docs/benchmarks.md).
    margin: float = 0.0
    # Weight of a second loss that flattens each image's softmax over the OTHER products, so
    # that a photo of a product the shop does not sell sits near no look-alike. Weight 1 raised
    # "not ours" coverage 0.01-0.04 and cost R@1 0.02 through the pipeline (docs/benchmarks.md).
    complement_entropy: float = 0.0
    batch_size: int = 64
    augmented_views: int = 3  # random crops per image, besides the plain one
    seed: int = 0
    # The model kept is this mix of the trained and the pretrained tail weights (WiSE-FT). 0.85
    # helped products the model never learned a little and photo search not (docs/benchmarks.md).
    fine_tuned_weight: float = 1.0
    # Regularisers for a tail that learns the catalogue's photos almost by heart (last loss
    # 0.06 without them): the i-th of each trained stage's n residual blocks skips its branch
    # for a share drop_path x i / n of the images (stochastic depth), and a share ``dropout``
    # of the pooled embedding's channels is zeroed per image. Training only; the stored model
    # is the same network. Together they lifted photo search R@1 by 1-4 photos of 296 and R@5
    # by 0-4, offline and through the pipeline, with "not ours" coverage about the same
    # (docs/benchmarks.md, "Stochastic depth and dropout while training").
    drop_path: float = 0.3
    dropout: float = 0.2

    def __post_init__(self) -> None:
        for name in ("drop_path", "dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"FineTuneConfig.{name} is a share from 0 to below 1.")


def _unevenness_of_the_rest(logits: Any, own: Any) -> Any:
    """The mean, over a batch, of log(K - 1) minus the entropy of each row's softmax over its
    K - 1 other products: 0 when an image is equally far from all of them."""
    import torch.nn.functional as F

    mask = own.bool()
    others = F.log_softmax(logits.masked_fill(mask, float("-inf")), dim=1).masked_fill(mask, 0.0)
    entropy = -(others.exp() * others).sum(dim=1)
    return (np.log(logits.shape[1] - 1) - entropy).mean()


def _parts(model: Any, trained_stages: int) -> tuple[Any, Any]:
    """(frozen trunk, trainable tail) of an EfficientNet-family timm model."""
    import torch

    needed = ("conv_stem", "bn1", "blocks", "conv_head", "bn2")
    if not all(hasattr(model, name) for name in needed):
        raise FineTuningUnsupported(
            f"Fine-tuning supports timm EfficientNet-family models; {type(model).__name__} "
            "is not one. Use the learned-whitening method instead."
        )
    cut = len(model.blocks) - trained_stages
    if not 1 <= cut < len(model.blocks):
        raise FineTuningUnsupported(
            f"trained_stages must be from 1 to {len(model.blocks) - 1}, not {trained_stages}."
        )
    trunk = torch.nn.Sequential(model.conv_stem, model.bn1, *model.blocks[:cut])
    tail = torch.nn.Sequential(*model.blocks[cut:], model.conv_head, model.bn2)
    return trunk.eval(), tail


def _transforms(model: Any) -> tuple[Any, Any, tuple[int, ...]]:
    """The encoder's own eval preprocessing, and a training one with crops and flips."""
    import timm.data
    import torchvision.transforms as T

    config = timm.data.resolve_model_data_config(model)
    plain = timm.data.create_transform(**config, is_training=False)
    size = config["input_size"][-1]
    augmented = T.Compose(
        [
            T.RandomResizedCrop(size, scale=(0.35, 1.0), interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(),
            T.ColorJitter(0.3, 0.3, 0.2),  # shop lighting
            T.ToTensor(),
            T.Normalize(config["mean"], config["std"]),
        ]
    )
    return plain, augmented, tuple(config["input_size"])


def _conv_norm_pairs(tail: Any) -> Iterator[tuple[Any, Any]]:
    """(convolution, the batch norm right after it) in the tail: siblings registered in that
    order, as every timm EfficientNet-family block and the head are."""
    import torch
    from timm.layers import Conv2dSame

    for parent in tail.modules():
        children = list(parent.children())
        for conv, norm in zip(children, children[1:], strict=False):
            if (
                type(conv) in (torch.nn.Conv2d, Conv2dSame)
                and conv.padding_mode == "zeros"
                and isinstance(norm, torch.nn.BatchNorm2d)
                and norm.running_var is not None
            ):
                yield conv, norm


@contextlib.contextmanager
def _norms_folded(tail: Any) -> Iterator[None]:
    """While training, each frozen batch norm runs inside the convolution before it: its
    scale multiplies the kernel and its shift becomes the bias, from the same parameters (the
    same function and gradients, so the same training), which spares the batch norm's pass
    over the feature maps forward and backward (docs/benchmarks.md)."""
    import torch
    from timm.layers import Conv2dSame, conv2d_same

    def folded(conv: Any, norm: Any) -> Callable[[Any], Any]:
        def forward(x: Any) -> Any:
            scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
            weight = conv.weight * scale.view(-1, 1, 1, 1)
            shift = norm.bias - norm.running_mean * scale
            bias = shift if conv.bias is None else shift + conv.bias * scale
            if isinstance(conv, Conv2dSame):
                args: tuple[Any, ...] = (conv.stride, conv.padding, conv.dilation, conv.groups)
                return conv2d_same(x, weight, bias, *args)
            return conv._conv_forward(x, weight, bias)

        return forward

    patched = []
    for conv, norm in list(_conv_norm_pairs(tail)):
        conv.forward = folded(conv, norm)
        norm.forward = _after_norm(norm)
        patched += [conv, norm]
    try:
        yield
    finally:
        for module in patched:
            del module.forward


def _after_norm(norm: Any) -> Callable[[Any], Any]:
    """What a (timm) batch norm does after normalising: its dropout and activation, if any."""
    steps = [getattr(norm, name) for name in ("drop", "act") if hasattr(norm, name)]

    def forward(x: Any) -> Any:
        for step in steps:
            x = step(x)
        return x

    return forward


def _kept(shape: tuple[int, ...], drop: float, generator: Any) -> Any:
    """A random mask that zeroes a share ``drop`` and scales the rest up to keep the mean;
    drawn from the tuner's own generator, so that a training beside another is reproducible."""
    import torch

    return (torch.rand(shape, generator=generator) >= drop) / (1 - drop)


@contextlib.contextmanager
def _stochastic_depth(tail: Any, rate: float, generator: Any) -> Iterator[None]:
    """While training, the tail's residual blocks skip their branch at random, deeper blocks
    more often (``FineTuneConfig.drop_path``); their own ``drop_path`` comes back after."""
    import torch

    class DropPath(torch.nn.Module):
        def __init__(self, drop: float) -> None:
            super().__init__()
            self.drop = drop

        def forward(self, x: Any) -> Any:
            if not self.training:
                return x
            return x * _kept((len(x), 1, 1, 1), self.drop, generator).to(x.dtype)

    replaced = []
    for stage in tail if rate else ():
        blocks = list(stage) if isinstance(stage, torch.nn.Sequential) else []
        for place, block in enumerate(blocks, 1):
            if getattr(block, "has_skip", False):
                replaced.append((block, block.drop_path))
                block.drop_path = DropPath(rate * place / len(blocks)).train(block.training)
    try:
        yield
    finally:
        for block, original in replaced:
            block.drop_path = original


def _scaled_down(image: Image.Image, size: int = 384) -> Image.Image:
    smaller = image.copy()  # thumbnail() works in place; the caller keeps the full image
    smaller.thumbnail((size, size))
    return smaller


def _rate_groups(tail: Any, config: FineTuneConfig) -> list[dict[str, Any]]:
    """The tail's parameters by learning rate: the last stage, the head conv and its norm at
    ``learning_rate``, each earlier stage at ``earlier_stage_rate`` times the next one's."""
    stages = config.trained_stages
    groups = [
        {
            "params": list(stage.parameters()),
            "lr": config.learning_rate * config.earlier_stage_rate ** (stages - 1 - place),
        }
        for place, stage in enumerate(tail[: stages - 1])
    ]
    last = [parameter for part in tail[stages - 1 :] for parameter in part.parameters()]
    return [*groups, {"params": last, "lr": config.learning_rate}]


def _pool(tail: Any, features: Any, dropout: float = 0.0, generator: Any = None) -> Any:
    import torch
    import torch.nn.functional as F

    maps = features.to(torch.float32, memory_format=torch.channels_last)
    pooled = tail(maps).mean((2, 3))
    if dropout:
        pooled = pooled * _kept(pooled.shape, dropout, generator)
    return F.normalize(pooled, dim=1)


class FineTuner:
    """Holds one model while it is trained: images are added in batches (only their trunk
    feature maps are kept), then the tail is trained on a selection of them (from its initial
    weights each time: a check model, then the one to store) and embeds what was added."""

    def __init__(self, model: Any, config: FineTuneConfig) -> None:
        import torch

        self.model = model
        self.config = config
        self.trunk, self.tail = _parts(model, config.trained_stages)
        self.tail.to(memory_format=torch.channels_last)
        self.plain, self.augmented, self.input_size = _transforms(model)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.views: list[list[Any]] = [[] for _ in range(1 + config.augmented_views)]
        self.labels: list[Any] = []
        self.features_s = 0.0
        self._session: Any = None
        self._initial_tail = copy.deepcopy(self.tail.state_dict())
        self._trained_tail = self._initial_tail

    def trunk_features(self, images: Sequence[Image.Image], *, augmented: bool = False) -> Any:
        """Half-precision feature maps of the frozen trunk for one view of these images."""
        return self._views_features([(images, augmented)])[0]

    def _views_features(self, jobs: Sequence[tuple[Sequence[Image.Image], bool]]) -> list[Any]:
        """Feature maps for each (images, augmented) job, in order.

        A worker thread draws the next batch's crops while the trunk runs on the current one:
        the transforms are a third of this work and run on one core (docs/benchmarks.md). The
        worker is the only one to draw from torch's random numbers, in the order of the jobs,
        so the crops are those a single thread would draw."""
        import torch

        started = time.monotonic()
        seeds = [int(torch.randint(0, 2**31, (1,), generator=self.generator)) for _ in jobs]

        def batch(job: int, start: int) -> Any:
            images, augmented = jobs[job]
            if start == 0:
                torch.manual_seed(seeds[job])
            transform = self.augmented if augmented else self.plain
            return torch.stack([transform(image) for image in images[start : start + TRUNK_BATCH]])

        session = self._trunk_session()
        pool = ThreadPoolExecutor(1, thread_name_prefix="visual-search-crops")
        try:
            pending = [
                (job, pool.submit(batch, job, start))
                for job, (images, _) in enumerate(jobs)
                for start in range(0, len(images), TRUNK_BATCH)
            ]
            chunks: list[list[Any]] = [[] for _ in jobs]
            for job, future in pending:
                pixels = future.result()
                if session is not None:
                    features = torch.from_numpy(session.run(None, {"pixels": pixels.numpy()})[0])
                else:
                    with torch.inference_mode():
                        features = self.trunk(pixels)
                chunks[job].append(features.half())
        finally:
            pool.shutdown(cancel_futures=True)
        self.features_s += time.monotonic() - started
        return [torch.cat(parts) for parts in chunks]

    def _trunk_session(self) -> Any:
        """The frozen trunk in onnxruntime (about 4x torch fp32 on a CPU; same features),
        exported once per tuner; None where onnxruntime is not installed. Its threads do not
        spin between runs: they would take the core the crops are drawn on."""
        if self._session is None:
            try:
                import onnxruntime as ort
            except ImportError:
                self._session = False
                return None
            from visual_search.encoders import export_onnx

            options = ort.SessionOptions()
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "trunk.onnx"
                export_onnx(self.trunk, self.input_size, str(path), output="features")
                self._session = ort.InferenceSession(
                    str(path), options, providers=["CPUExecutionProvider"]
                )
        return self._session or None

    def add(self, images: Sequence[Image.Image], labels: Sequence[Any]) -> None:
        """Training images of these products: the plain view of each image as the encoder
        sees it (so that the vectors ``added_vectors`` gives are the ones the pipeline would
        store), and the augmented ones from a copy at most 384 px wide (cheaper crops)."""
        small = [_scaled_down(image) for image in images] if len(self.views) > 1 else images
        jobs = [(small if view else images, view > 0) for view in range(len(self.views))]
        for store, features in zip(self.views, self._views_features(jobs), strict=True):
            store.append(features)
        self.labels.extend(labels)

    def embed_features(self, features: Any, batch_size: int = 256) -> np.ndarray:
        """Unit vectors of the current tail for kept trunk features."""
        import torch

        self.tail.eval()
        with torch.inference_mode():
            out = [
                _pool(self.tail, features[i : i + batch_size])
                for i in range(0, len(features), batch_size)
            ]
        return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)

    def added_vectors(self, selected: np.ndarray | None = None) -> np.ndarray:
        """The added images (all, or a boolean selection) embedded by the current model."""
        import torch

        features = self._kept_views()[0]
        if selected is not None:
            features = features[torch.from_numpy(np.asarray(selected, dtype=bool))]
        return self.embed_features(features)

    def _kept_views(self) -> list[Any]:
        """Each view's feature maps of every added image, as one tensor (joined in place, so
        that forks share it and trainings index it without a copy)."""
        import torch

        for store in self.views:
            if len(store) != 1:
                store[:] = [torch.cat(store)]
        return [store[0] for store in self.views]

    def fork(self) -> FineTuner:
        """A tuner over the same added images with its own copy of the model and its own
        random numbers: to train a second model beside this one (``TrainingBeside``)."""
        import torch

        self._kept_views()
        other = copy.copy(self)
        other.model = copy.deepcopy(self.model)
        other.trunk, other.tail = _parts(other.model, self.config.trained_stages)
        other.generator = torch.Generator().manual_seed(self.config.seed + 1)
        other._trained_tail = self._initial_tail
        return other

    def train(
        self,
        selected: np.ndarray | None = None,
        progress: Callable[[str], None] = lambda message: None,
        *,
        between_steps: Callable[[], None] = lambda: None,
        epoch_size: int | None = None,
    ) -> dict[str, Any]:
        """Train the tail, from its initial weights, on the added images (all, or a boolean
        selection); returns timings and the last epoch's loss. ``between_steps`` runs before
        each step (``TrainingBeside`` sets the thread count there, or stops the training).
        ``epoch_size`` caps an epoch at that many images drawn without replacement: extra
        copies of some images then weigh more without lengthening the training."""
        import torch
        import torch.nn.functional as F

        config = self.config
        self.tail.load_state_dict(self._initial_tail)
        mask = torch.ones(len(self.labels), dtype=torch.bool)
        if selected is not None:
            mask = torch.from_numpy(np.asarray(selected, dtype=bool))
        labels = [label for label, keep in zip(self.labels, mask.tolist(), strict=True) if keep]
        classes = {label: index for index, label in enumerate(dict.fromkeys(labels))}
        targets = torch.tensor([classes[label] for label in labels])
        rows = torch.arange(len(self.labels))[mask]  # the selected images' places in the views
        views = self._kept_views()
        started = time.monotonic()
        with torch.no_grad():  # proxies start at the products' mean embeddings
            plain = torch.from_numpy(self.embed_features(views[0][rows]))
            proxies = torch.stack(
                [F.normalize(plain[targets == c].mean(0), dim=0) for c in range(len(classes))]
            )
        proxies = torch.nn.Parameter(proxies)
        groups = [
            *_rate_groups(self.tail, config),
            {"params": [proxies], "lr": config.learning_rate * 10},
        ]
        optimiser = torch.optim.AdamW(groups, weight_decay=1e-4)
        drawn = len(targets) if epoch_size is None else min(epoch_size, len(targets))
        total_steps = config.epochs * -(-drawn // config.batch_size)
        # The rate warms up over the first tenth of the steps. OneCycleLR divides by that
        # length less one step, so a training of 10 steps or fewer (a catalogue of 64 images
        # or fewer, at 10 epochs) warms up over one step and a half instead.
        warm_up = 0.1 if total_steps > 10 else min(0.75, 1.5 / total_steps)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimiser,
            max_lr=[group["lr"] for group in groups],
            total_steps=total_steps,
            pct_start=warm_up,
        )
        loss_value = float("nan")
        with (
            _norms_folded(self.tail),
            _stochastic_depth(self.tail, config.drop_path, self.generator),
        ):
            for epoch in range(config.epochs):
                loss_value = self._epoch(
                    views, rows, targets, drawn, proxies, optimiser, schedule, between_steps
                )
                progress(f"epoch {epoch + 1}/{config.epochs}: loss {loss_value:.3f}")
        self._trained_tail = copy.deepcopy(self.tail.state_dict())
        self.blend(config.fine_tuned_weight)
        return {
            "training_images": len(targets),
            "epoch_images": drawn,
            "products": len(classes),
            "features_s": round(self.features_s, 1),
            "train_s": round(time.monotonic() - started, 1),
            "loss": round(loss_value, 4),
        }

    def _epoch(
        self,
        views: list[Any],
        rows: Any,
        targets: Any,
        drawn: int,
        proxies: Any,
        optimiser: Any,
        schedule: Any,
        between_steps: Callable[[], None],
    ) -> float:
        """``drawn`` of the images (all: one pass), each in one of its views drawn at random;
        the mean loss."""
        import torch
        import torch.nn.functional as F

        config = self.config
        self._train_mode()
        order = torch.randperm(len(targets), generator=self.generator)[:drawn]
        chosen = torch.randint(0, len(views), (len(targets),), generator=self.generator)
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            between_steps()
            index = order[start : start + config.batch_size]
            batch = torch.stack(
                [
                    views[v][i]
                    for v, i in zip(chosen[index].tolist(), rows[index].tolist(), strict=True)
                ]
            )
            if bool(torch.rand(1, generator=self.generator) < 0.5):
                batch = batch.flip(3)
            embeddings = _pool(self.tail, batch, config.dropout, self.generator)
            cosines = embeddings @ F.normalize(proxies, dim=1).T
            own = F.one_hot(targets[index], len(proxies))
            logits = config.scale * (cosines - config.margin * own)
            loss = F.cross_entropy(logits, targets[index])
            if config.complement_entropy:
                loss = loss + config.complement_entropy * _unevenness_of_the_rest(logits, own)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item() * len(index)
        return total / len(order)

    def blend(self, weight: float) -> None:
        """Set the tail to ``weight`` x the last trained weights + the rest pretrained ones."""
        import torch

        trained = self._trained_tail
        if weight != 1.0:
            trained = {
                name: torch.lerp(self._initial_tail[name], value, weight)
                if value.is_floating_point()
                else value
                for name, value in trained.items()
            }
        self.tail.load_state_dict(trained)
        self.tail.eval()

    def _train_mode(self) -> None:
        import torch

        self.tail.train()
        for module in self.tail.modules():  # frozen statistics: small, mixed batches
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eval()

    def state_bytes(self) -> bytes:
        """The whole model's state dict in timm's names, as ``torch.save`` bytes."""
        import torch

        buffer = io.BytesIO()
        torch.save(self.model.state_dict(), buffer)
        return buffer.getvalue()


class TrainingBeside:
    """A second model trained in a background thread while the calling thread trains another.

    On 2 cores, two trainings with one torch thread each make a step apiece in about 1.1 s,
    where one training with both threads makes a step in about 0.65 s (docs/benchmarks.md):
    the adaptation's check model and the model it stores learn together. Each has its own
    model and random numbers, so the outcome does not depend on how the threads interleave.
    Until ``result`` or ``cancel``, the calling thread runs torch on one thread."""

    def __init__(
        self,
        tuner: FineTuner,
        selected: np.ndarray | None,
        label: str = "model to store",
        *,
        epoch_size: int | None = None,
    ) -> None:
        import torch

        self._cores = torch.get_num_threads()
        self._share = 1
        self._stop = threading.Event()
        self._lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._outcome: dict[str, Any] | BaseException | None = None
        self._label = label
        torch.set_num_threads(1)  # this thread's, and the count a new thread starts with
        self._thread = threading.Thread(
            target=self._run,
            args=(tuner, selected, epoch_size),
            name="visual-search-training",
            daemon=True,
        )
        self._thread.start()

    @staticmethod
    def pays() -> bool:
        """Whether torch has two or more threads here to share between two trainings."""
        import torch

        return torch.get_num_threads() >= 2

    def _run(self, tuner: FineTuner, selected: np.ndarray | None, epoch_size: int | None) -> None:
        try:
            self._outcome = tuner.train(
                selected,
                lambda line: self._lines.put(f"{self._label}: {line}"),
                between_steps=self._between_steps,
                epoch_size=epoch_size,
            )
        except BaseException as exc:  # raised again in the calling thread, by result()
            self._outcome = exc

    def _between_steps(self) -> None:
        """In the background thread: stop when cancelled, else take the current share of
        threads (torch's thread count is per thread once set)."""
        import torch

        if self._stop.is_set():
            raise TrainingStopped("The training was stopped.")
        if torch.get_num_threads() != self._share:
            torch.set_num_threads(self._share)

    def relay(self, progress: Callable[[str], None]) -> None:
        """Pass the background training's progress lines on, from the calling thread."""
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return
            progress(line)

    def result(self, progress: Callable[[str], None]) -> dict[str, Any]:
        """Give the background training every thread, wait for it and return what its
        ``train`` returned (or raise what it raised)."""
        self._release()
        while self._thread.is_alive():
            self._thread.join(timeout=1.0)
            self.relay(progress)
        self.relay(progress)
        if isinstance(self._outcome, BaseException):
            raise self._outcome
        assert self._outcome is not None
        return self._outcome

    def cancel(self) -> None:
        """Stop the background training (at its next step) and wait for it."""
        self._stop.set()
        self._release()
        self._thread.join()

    def _release(self) -> None:
        import torch

        torch.set_num_threads(self._cores)
        self._share = self._cores
