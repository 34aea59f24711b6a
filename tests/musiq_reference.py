"""A transcription of the MUSIQ authors' published procedure (musiq/model/preprocessing.py,
multiscale_transformer.py, multiscale_transformer_utils.py, resnet.py, run_predict_image.py),
written for the tests in NumPy (the TensorFlow preprocessing, step by step in float32) and JAX
(the network, as ``flax.nn``'s modules compute: SAME convolutions and pooling through
``lax``, GroupNorm and LayerNorm with var = E[x²] − E[x]², ``jax.nn.gelu``'s default tanh form,
attention with the padding mask as a −1e10 bias on queries and keys, every resized scale padded
to its fixed length). It reads the authors' flat ``opt/target/...`` checkpoint names.

It also writes the generated checkpoints, ``.npz`` files of those names at small sizes.
"""

from __future__ import annotations

import math

import numpy as np

PREFIX = "opt/target/"
# A small MUSIQ of the authors' layout: the ResNet stem as theirs (64 → 256 channels on 8 × 8), then
# 32-d tokens, 2 heads, MLP 48, 2 layers, a 10 × 10 hash grid and 3 scales.
TINY = dict(dim=32, heads=2, hidden=48, layers=2, grid=10, scales=3)
PP = dict(patch_size=32, patch_stride=32, hse_grid_size=10, longer_side_lengths=[224, 384])


# --- preprocessing (TensorFlow's ops, transcribed) -------------------------------------------------


def tf_round(x: np.float32) -> int:
    return int(np.round(x))  # half to even, as tf.round


def gaussian_kernel(x: float) -> np.float32:
    """TensorFlow's GaussianKernelFunc: radius 1.5, sigma = radius / 3."""
    radius, sigma = np.float32(1.5), np.float32(0.5)
    x = abs(np.float32(x))
    if x >= radius:
        return np.float32(0.0)
    return np.float32(np.exp(-float(x) * float(x) / (2.0 * float(sigma) * float(sigma))))


def spans(input_size: int, output_size: int) -> list[tuple[int, list[np.float32]]]:
    """TensorFlow's ComputeSpansCore for scale_and_translate (antialias off, no translation)."""
    scale = np.float32(output_size) / np.float32(input_size)
    inv_scale = np.float32(1.0) / scale
    radius = np.float32(1.5)
    out = []
    for x in range(output_size):
        sample_f = (np.float32(x) + np.float32(0.5)) * inv_scale
        start = math.ceil(sample_f - radius - np.float32(0.5))
        end = math.floor(sample_f + radius - np.float32(0.5))
        start = min(max(start, 0), input_size - 1)
        end = min(max(end, 0), input_size - 1) + 1
        weights = [gaussian_kernel(np.float32(source) + np.float32(0.5) - sample_f) for source in range(start, end)]
        total = np.float32(sum(weights, np.float32(0.0)))
        out.append((start, [np.float32(w / total) for w in weights]))
    return out


def tf_gaussian_resize(image: np.ndarray, rh: int, rw: int) -> np.ndarray:
    """tf.image.resize(method=GAUSSIAN) of an (H, W, C) float32 image: rows first, then columns."""
    h, w, c = image.shape
    rows = np.zeros((rh, w, c), np.float32)
    for y, (start, weights) in enumerate(spans(h, rh)):
        for k, weight in enumerate(weights):
            rows[y] += weight * image[start + k]
    out = np.zeros((rh, rw, c), np.float32)
    for x, (start, weights) in enumerate(spans(w, rw)):
        for k, weight in enumerate(weights):
            out[:, x] += weight * rows[:, start + k]
    return out


def extract_patches_same(image: np.ndarray, size: int) -> np.ndarray:
    """tf.image.extract_patches with SAME padding: (count_h · count_w, size · size · C)."""
    h, w, c = image.shape
    count_h, count_w = -(-h // size), -(-w // size)
    pad_h, pad_w = max((count_h - 1) * size + size - h, 0), max((count_w - 1) * size + size - w, 0)
    padded = np.zeros((h + pad_h, w + pad_w, c), np.float32)
    padded[pad_h // 2 : pad_h // 2 + h, pad_w // 2 : pad_w // 2 + w] = image
    out = []
    for i in range(count_h):
        for j in range(count_w):
            out.append(padded[i * size : (i + 1) * size, j * size : (j + 1) * size].reshape(-1))
    return np.stack(out)


def hashed_index(grid: int, count_h: int, count_w: int) -> np.ndarray:
    """get_hashed_spatial_pos_emb_index: TF1 nearest-neighbour resize of range(grid) to each count."""

    def nearest(count: int) -> list[int]:
        scale = np.float32(grid) / np.float32(count)
        return [min(int(np.floor(np.float32(i) * scale)), grid - 1) for i in range(count)]

    hash_h, hash_w = nearest(count_h), nearest(count_w)
    return np.array([hh * grid + ww for hh in hash_h for ww in hash_w], np.float32)


def scale_rows(image: np.ndarray, scale_id: int, max_seq_len: int) -> np.ndarray:
    """(patches, spatial, scale, mask) rows of one scale, padded or cut to ``max_seq_len`` (< 0: all)."""
    h, w, _ = image.shape
    p = extract_patches_same(image, PP["patch_size"])
    spatial = hashed_index(PP["hse_grid_size"], -(-h // 32), -(-w // 32))[:, None]
    out = np.concatenate([p, spatial, np.full_like(spatial, scale_id), np.ones_like(spatial)], axis=1)
    if max_seq_len >= 0:
        out = np.concatenate([out, np.zeros((max_seq_len, out.shape[1]), np.float32)])[:max_seq_len]
    return out


def preprocess(rgb: np.ndarray) -> np.ndarray:
    """get_preprocess_fn on a decoded uint8 image: [−1, 1], then get_multiscale_patches."""
    image = np.float32(-1) + (rgb.astype(np.float32) - np.float32(0)) / (np.float32(255) - np.float32(0)) * np.float32(2)
    h, w, _ = image.shape
    rows = []
    for scale_id, longer in enumerate(sorted(PP["longer_side_lengths"])):
        ratio = np.float32(longer) / np.float32(max(h, w))
        rh, rw = tf_round(np.float32(h) * ratio), tf_round(np.float32(w) * ratio)
        rows.append(scale_rows(tf_gaussian_resize(image, rh, rw), scale_id, int(np.ceil(longer / 32) ** 2)))
    rows.append(scale_rows(image, len(PP["longer_side_lengths"]), -1))
    return np.concatenate(rows)


# --- the network (flax.nn's modules, in JAX) -----------------------------------------------------------


def model_apply(params: dict, x: np.ndarray, num_classes: int) -> float:
    """multiscale_transformer.Model on one preprocessed (L, 32·32·3 + 3) input → the predicted MOS."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    p = {k.removeprefix(PREFIX): jnp.asarray(v) for k, v in params.items()}
    x = jnp.asarray(x)[None]
    spatial, scale_pos, masks = x[:, :, -3].astype(jnp.int32), x[:, :, -2].astype(jnp.int32), x[:, :, -1].astype(bool)
    x = x[:, :, :-3]
    n, length, channel = x.shape

    def std_conv(h, name, strides):
        w = p[name + "/kernel"]
        w = w - jnp.mean(w, axis=[0, 1, 2])
        w = w / (jnp.std(w, axis=[0, 1, 2]) + 1e-5)
        return lax.conv_general_dilated(h, w, strides, "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def group_norm(h, name, eps, groups=32):
        b, hh, ww, c = h.shape
        g = h.reshape(b, hh, ww, groups, c // groups)
        mean = jnp.mean(g, axis=(1, 2, 4), keepdims=True)
        var = jnp.mean(jnp.square(g), axis=(1, 2, 4), keepdims=True) - jnp.square(mean)
        g = (g - mean) * lax.rsqrt(var + eps)
        return g.reshape(b, hh, ww, c) * p[name + "/scale"] + p[name + "/bias"]

    def layer_norm(h, name):
        mean = jnp.mean(h, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(h), axis=-1, keepdims=True) - jnp.square(mean)
        return (h - mean) * lax.rsqrt(var + 1e-6) * p[name + "/scale"] + p[name + "/bias"]

    def dense(h, name):
        return h @ p[name + "/kernel"] + p[name + "/bias"]

    patch = int(np.sqrt(channel // 3))
    h = x.reshape(-1, patch, patch, 3)
    h = jax.nn.relu(group_norm(std_conv(h, "conv_root", (2, 2)), "gn_root", 1e-6))
    h = lax.reduce_window(h, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "SAME")
    unit = "block1/unit1/"
    residual = group_norm(std_conv(h, unit + "conv_proj", (1, 1)), unit + "gn_proj", 1e-4)
    y = jax.nn.relu(group_norm(std_conv(h, unit + "conv1", (1, 1)), unit + "gn1", 1e-4))
    y = jax.nn.relu(group_norm(std_conv(y, unit + "conv2", (1, 1)), unit + "gn2", 1e-4))
    y = group_norm(std_conv(y, unit + "conv3", (1, 1)), unit + "gn3", 1e-4)
    h = jax.nn.relu(residual + y).reshape(n, length, -1)
    h = dense(h, "embedding")

    t = "Transformer/"
    h = h + jnp.take(p[t + "posembed_input/pos_embedding"][0], spatial, axis=0)
    h = h + jnp.take(p[t + "scaleembed_input/scale_embedding"][0], scale_pos, axis=0)
    h = jnp.concatenate([jnp.tile(p[t + "cls"], [n, 1, 1]), h], axis=1)
    masks = jnp.concatenate([jnp.ones((n, 1), bool), masks], axis=1)
    bias = jnp.where(masks[:, None, :, None] & masks[:, None, None, :], 0.0, -1e10)  # (b, 1, q, k)
    layers = len({k.split("/")[1] for k in p if k.startswith(t + "encoderblock_")})
    for i in range(layers):
        block = f"{t}encoderblock_{i}/"
        y = layer_norm(h, block + "LayerNorm_0")
        att = block + "SelfAttention_1/"
        q, k, v = (jnp.einsum("bli,ihd->blhd", y, p[att + f"{s}/kernel"]) + p[att + f"{s}/bias"] for s in ("query", "key", "value"))
        q = q / jnp.sqrt(q.shape[-1]).astype(q.dtype)
        weights = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) + bias, axis=-1)
        y = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        y = jnp.einsum("bqhd,hdo->bqo", y, p[att + "out/kernel"]) + p[att + "out/bias"]
        h = y + h
        y = layer_norm(h, block + "LayerNorm_2")
        y = dense(jax.nn.gelu(dense(y, block + "MlpBlock_3/Dense_0")), block + "MlpBlock_3/Dense_1")
        h = y + h
    h = layer_norm(h, t + "encoder_norm")[:, 0]
    logits = dense(h, "head")
    preds = jax.nn.softmax(logits) if num_classes > 1 else logits
    return float(jnp.sum(preds * jnp.arange(1, num_classes + 1, dtype=jnp.float32), axis=-1)[0])


def reference_score(params: dict, rgb: np.ndarray) -> float:
    classes = params[PREFIX + "head/kernel"].shape[1]
    return model_apply(params, preprocess(rgb), classes)


# --- generated checkpoints ---------------------------------------------------------------------------


def generated_params(seed: int, classes: int = 1, sizes: dict = TINY) -> dict[str, np.ndarray]:
    """The authors' flat names and (flax) shapes at ``sizes``, with weights that keep activations
    in range: fan-in-scaled normal kernels, norms near identity, small biases and embeddings."""
    rng = np.random.default_rng(seed)
    dim, heads, hidden = sizes["dim"], sizes["heads"], sizes["hidden"]
    shapes = {"conv_root/kernel": (7, 7, 3, 64), "gn_root/scale": (64,), "gn_root/bias": (64,)}
    for name, shape in (("conv_proj", (1, 1, 64, 256)), ("conv1", (1, 1, 64, 64)), ("conv2", (3, 3, 64, 64)), ("conv3", (1, 1, 64, 256))):
        shapes[f"block1/unit1/{name}/kernel"] = shape
        norm = name.replace("conv", "gn")
        shapes[f"block1/unit1/{norm}/scale"] = shapes[f"block1/unit1/{norm}/bias"] = (shape[-1],)
    shapes.update({"embedding/kernel": (8 * 8 * 256, dim), "embedding/bias": (dim,)})
    shapes.update({"head/kernel": (dim, classes), "head/bias": (classes,)})
    t = "Transformer/"
    shapes.update(
        {
            t + "posembed_input/pos_embedding": (1, sizes["grid"] ** 2, dim),
            t + "scaleembed_input/scale_embedding": (1, sizes["scales"], dim),
            t + "cls": (1, 1, dim),
            t + "encoder_norm/scale": (dim,),
            t + "encoder_norm/bias": (dim,),
        }
    )
    for i in range(sizes["layers"]):
        b = f"{t}encoderblock_{i}/"
        for norm in ("LayerNorm_0", "LayerNorm_2"):
            shapes[b + norm + "/scale"] = shapes[b + norm + "/bias"] = (dim,)
        for proj in ("query", "key", "value"):
            shapes[b + f"SelfAttention_1/{proj}/kernel"] = (dim, heads, dim // heads)
            shapes[b + f"SelfAttention_1/{proj}/bias"] = (heads, dim // heads)
        shapes[b + "SelfAttention_1/out/kernel"], shapes[b + "SelfAttention_1/out/bias"] = (heads, dim // heads, dim), (dim,)
        shapes[b + "MlpBlock_3/Dense_0/kernel"], shapes[b + "MlpBlock_3/Dense_0/bias"] = (dim, hidden), (hidden,)
        shapes[b + "MlpBlock_3/Dense_1/kernel"], shapes[b + "MlpBlock_3/Dense_1/bias"] = (hidden, dim), (dim,)
    params = {}
    for name, shape in shapes.items():
        if name.endswith("/scale"):
            value = rng.uniform(0.7, 1.3, shape)
        elif name.endswith("/bias"):
            value = rng.uniform(-0.1, 0.1, shape)
        elif name.endswith("/kernel"):
            # fan-in: every axis but the output's; a query/key/value kernel (in, heads, d) reads `in`
            fan_in = shape[0] if "SelfAttention_1/" in name and "/out/" not in name else int(np.prod(shape[:-1]))
            value = rng.normal(0, 1, shape) / np.sqrt(fan_in)
        else:
            value = rng.normal(0, 0.1, shape)
        params[PREFIX + name] = value.astype(np.float32)
    if classes == 1:
        params[PREFIX + "head/bias"][:] = 50.0  # a KonIQ-like MOS near 50
    return params
