"""Where a head's decision came from: a heatmap over the image for the class it chose.

Two methods, picked by what the head reads (callers never branch on the head's kind):

- scikit-learn heads (logreg, svm): gradient x activation. The gradient of the chosen class's
  score with respect to the pooled vector is taken through the head (logistic regression's
  coefficients, the SVM's kernel expansion) and its scaling (standardisation, l2
  normalisation, the square root's derivative), then through the pooling to each location of
  the tapped maps: average pooling shares a channel's gradient over every location, max pooling
  gives it to the argmax. Each location's contribution is the sum over channels of gradient x
  activation. For a linear head on average-pooled, standardised vectors the contributions add
  up exactly to the score less its intercept and the scaler's offset. Numpy only, on the maps
  the forward pass already made: no TensorFlow.
- Keras heads (dense, finetune): Grad-CAM (Selvaraju et al., 2017), with tf.GradientTape: on
  the last convolution the head has (block5_conv3 for finetune), else on the maps it reads or
  pools (a dense head on pooled vectors: each tapped layer's maps, the gradient taken through
  the pooling as above). Channel weights are the spatial mean of the score's gradient; the map
  is the ReLU of the weighted sum of channels.

The score is the class's logit (for two classes, the logit of the second, negated for the
first), not its probability, so a confident prediction does not flatten the gradients.

Each layer's grid is upsampled to the image (bilinear, grid cells centred on the pixels they
summarise: a block5_pool cell covers 32x32 pixels) and divided by the pixels a cell spans, so
the heatmap is a contribution per pixel, and layers are summed. With views, each view's heatmap
is mapped back to the image's orientation (`extractor.augment.unmake_view`) and the heatmaps
averaged where the views show the image.
"""

from __future__ import annotations

import base64
import dataclasses
import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from extractor.spec import parse_feature_name
from extractor.vgg16 import layer_stride

if TYPE_CHECKING:
    from PIL import Image

    from classifier.artifact import LoadedHead
    from classifier.heads import Head
    from classifier.views import Views

GRADIENT_X_ACTIVATION = "gradient x activation"
GRAD_CAM = "grad-cam"
#: The Keras layer Grad-CAM looks at when a head has it (finetune heads run block5 themselves).
GRAD_CAM_LAYER = "block5_conv3"


class ExplainError(ValueError):
    """A head this module cannot explain (e.g. a multi-class SVM)."""


@dataclasses.dataclass
class Explanation:
    """A heatmap for one image: `grid[r, c]` is pixel (r, c)'s contribution to the score of
    `label` (positive: for it), on the image as the conv base saw it (`pixels`)."""

    grid: NDArray[np.float32]
    pixels: NDArray[np.uint8]
    label: str
    method: str

    @property
    def overlay(self) -> Image.Image:
        """The image with the heatmap's positive part laid over it (PIL, RGB)."""
        return overlay(self.pixels, self.grid)

    def overlay_png(self) -> bytes:
        buf = io.BytesIO()
        self.overlay.save(buf, format="PNG", compress_level=3)  # optimize: slower, no smaller
        return buf.getvalue()

    def to_json(self) -> dict[str, Any]:
        """`{"grid": [[float]], "overlay_png": "<base64 PNG>"}`, as `serve` answers it."""
        return {"grid": grid_json(self.grid),
                "overlay_png": base64.b64encode(self.overlay_png()).decode("ascii")}


def explain(head: LoadedHead, maps: Mapping[str, NDArray[np.floating]],
            proba: NDArray[np.floating], pixels: NDArray[np.uint8],
            views: Views | None = None, sha256: str = "") -> Explanation:
    """Explain one image's prediction.

    `maps`: layer -> (rows, h, w, C) maps of the image (row 0) and of each of its views (rows
    1, 2, ... as `extractor.augment.make_view` numbers them), as `ConvBase.maps` returns them;
    `proba`: the head's (rows, classes) probabilities of those rows, whose mean picks the class;
    `pixels`: the image itself at the model's input size; `views` and `sha256` (the image
    bytes' hash) say how each view was made, to map its heatmap back.
    """
    column = int(np.argmax(np.asarray(proba, dtype=np.float64).mean(axis=0)))
    size = int(pixels.shape[0])
    rows = len(proba)
    grids = []
    method = ""
    for r in range(rows):
        cells, method = contributions(head.head, head.feature_names,
                                      {k: np.asarray(v[r]) for k, v in maps.items()}, column)
        grids.append(to_image(cells, size))
    grid = grids[0] if rows == 1 else combine_views(grids, views, sha256)
    return Explanation(grid.astype(np.float32), np.asarray(pixels, dtype=np.uint8),
                       head.classes_[column], method)


def contributions(head: Head, feature_names: Sequence[str],
                  maps: Mapping[str, NDArray[np.floating]], column: int,
                  ) -> tuple[dict[str, NDArray[np.float64]], str]:
    """Layer -> (h, w) contributions of its locations to class `column`'s score, for one image
    (`maps`: layer -> (h, w, C)); and the method used."""
    from classifier.dense import DenseHead
    from classifier.heads import SklearnHead

    parts = [(name, *parse_feature_name(name)) for name in feature_names]
    if isinstance(head, DenseHead) and any(how is None for _, _, how in parts):
        (_, layer, _), = parts  # a Keras head on maps reads one layer's maps
        return grad_cam(head.model_, np.asarray(maps[layer], np.float32), column, layer), \
            GRAD_CAM
    vectors = [_pooled(np.asarray(maps[layer], np.float32), how) for _, layer, how in parts]
    v = np.concatenate(vectors).astype(np.float64)
    if isinstance(head, SklearnHead):
        g = sklearn_gradient(head, v, column)
    elif isinstance(head, DenseHead):
        g = keras_gradient(head.model_, v, column)
    else:
        raise ExplainError(f"cannot explain a {head.kind} head")
    # The score's gradient with respect to each tapped layer's maps, through the pooling.
    grads: dict[str, NDArray[np.float64]] = {}
    start = 0
    for (_, layer, how), vec in zip(parts, vectors, strict=True):
        a = np.asarray(maps[layer], np.float64)
        d = _map_gradient(a, g[start:start + vec.size], how)
        start += vec.size
        grads[layer] = grads[layer] + d if layer in grads else d
    acts = {layer: np.asarray(maps[layer], np.float64) for layer in grads}
    if isinstance(head, DenseHead):  # Keras: Grad-CAM on the maps it pools
        return {layer: _cam(acts[layer], d) for layer, d in grads.items()}, GRAD_CAM
    return {layer: (d * acts[layer]).sum(axis=2) for layer, d in grads.items()}, \
        GRADIENT_X_ACTIVATION


def _pooled(a: NDArray[np.float32], how: str | None) -> NDArray[np.float32]:
    if how is None:
        return a.reshape(-1)
    if how == "avg":
        return a.mean(axis=(0, 1), dtype=np.float32)
    return a.max(axis=(0, 1))


def _map_gradient(a: NDArray[np.float64], g: NDArray[np.float64],
                  how: str | None) -> NDArray[np.float64]:
    """The gradient with respect to (h, w, C) maps, given the one with respect to their pooled
    vector (C,) (or to the flattened maps, `how` None): average pooling shares it over every
    location, max pooling gives it to the location each channel's maximum came from."""
    h, w, c = a.shape
    if how is None:
        return g.reshape(h, w, c)
    if how == "avg":
        return np.broadcast_to(g / (h * w), (h, w, c)).copy()
    out = np.zeros((h * w, c))
    out[a.reshape(h * w, c).argmax(axis=0), np.arange(c)] = g
    return out.reshape(h, w, c)


def _cam(acts: NDArray[np.float64], grads: NDArray[np.float64]) -> NDArray[np.float64]:
    """Grad-CAM: channels weighted by their gradient's spatial mean, summed, ReLU."""
    return np.maximum(acts @ grads.mean(axis=(0, 1)), 0.0)


def sklearn_gradient(head: Any, v: NDArray[np.float64], column: int) -> NDArray[np.float64]:
    """d(score of class `column`) / d(pooled vector `v`) for a logreg or svm head."""
    from sklearn.preprocessing import Normalizer

    scaler, clf = head.pipeline_.steps[0][1], head.pipeline_.steps[1][1]
    u = np.sqrt(np.maximum(v, 0.0)) if head.scaling == "sqrt" else v
    if isinstance(scaler, Normalizer):
        norm = float(np.linalg.norm(u)) or 1.0
        z = u / norm
    else:
        scale = np.ones_like(u) if scaler.scale_ is None else np.asarray(scaler.scale_)
        mean = np.zeros_like(u) if scaler.mean_ is None else np.asarray(scaler.mean_)
        z = (u - mean) / scale
    gz = _score_gradient(clf, z, column)
    gu = (gz - (gz @ z) * z) / norm if isinstance(scaler, Normalizer) else gz / scale
    if head.scaling != "sqrt":
        return gu
    # d sqrt(v) / dv = 1 / (2 sqrt(v)); a channel at 0 is 0 at every location: no contribution.
    return np.divide(gu, 2.0 * u, out=np.zeros_like(gu), where=u > 0)


def _score_gradient(clf: Any, z: NDArray[np.float64], column: int) -> NDArray[np.float64]:
    from sklearn.calibration import CalibratedClassifierCV

    if isinstance(clf, CalibratedClassifierCV):
        if len(clf.classes_) != 2:
            raise ExplainError("explaining an svm head needs two classes; this one has "
                               f"{len(clf.classes_)} (train a logreg head to explain it)")
        calibrated = clf.calibrated_classifiers_[0]
        svc = calibrated.estimator
        # The calibrated probability of the second class is expit(-(a f + b)).
        sign = -1.0 if float(calibrated.calibrators[0].a_) > 0 else 1.0
        if svc.kernel == "linear":
            g = np.asarray(svc.coef_, np.float64)[0]
        else:  # rbf: f(z) = sum_i alpha_i exp(-gamma |z - s_i|^2) + b
            s = np.asarray(svc.support_vectors_, np.float64)
            alpha = np.asarray(svc.dual_coef_, np.float64)[0]
            gamma = float(svc._gamma)
            d = z[None, :] - s
            k = np.exp(-gamma * (d * d).sum(axis=1))
            g = -2.0 * gamma * ((alpha * k) @ d)
        g = sign * g
        return g if column == 1 else -g
    coef = np.asarray(clf.coef_, np.float64)
    if coef.shape[0] == 1:  # two classes: one logit, for the second
        return coef[0] if column == 1 else -coef[0]
    return coef[column] - coef.mean(axis=0)


def _logit_model(model: Any, target: str | None) -> tuple[Any, Any]:
    """A model giving (target layer's output, the last layer's input) for a Keras head."""
    import keras

    last = model.layers[-1]
    outputs = [last.input] if target is None else [model.get_layer(target).output, last.input]
    return keras.Model(model.inputs, outputs), last


def _score(last: Any, x: Any, column: int) -> Any:
    import tensorflow as tf

    kernel, bias = (tf.convert_to_tensor(w) for w in last.weights[:2])
    logits = tf.matmul(x, kernel) + bias
    if int(logits.shape[-1]) == 1:
        return logits[:, 0] if column == 1 else -logits[:, 0]
    return logits[:, column] - tf.reduce_mean(logits, axis=1)


def keras_gradient(model: Any, v: NDArray[np.float64], column: int) -> NDArray[np.float64]:
    """d(logit of class `column`) / d(input vector) of a Keras dense head on pooled vectors."""
    import tensorflow as tf

    sub, last = _logit_model(model, None)
    x = tf.constant(v[None, :], dtype=tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        score = _score(last, sub(x, training=False), column)
    return np.asarray(tape.gradient(score, x), np.float64)[0]


def grad_cam(model: Any, maps: NDArray[np.float32], column: int,
             layer: str) -> dict[str, NDArray[np.float64]]:
    """Grad-CAM of a Keras head on (h, w, C) maps of `layer`: {layer it looked at: (h', w')}."""
    import tensorflow as tf

    names = {lyr.name for lyr in model.layers}
    target = GRAD_CAM_LAYER if GRAD_CAM_LAYER in names else None
    sub, last = _logit_model(model, target)
    x = tf.constant(maps[None], dtype=tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        if target is None:
            a, hidden = x, sub(x, training=False)
        else:
            a, hidden = sub(x, training=False)
        score = _score(last, hidden, column)
    grads = np.asarray(tape.gradient(score, a), np.float64)[0]
    return {target or layer: _cam(np.asarray(a, np.float64)[0], grads)}


def _interpolation(cells: int, stride: int, size: int) -> NDArray[np.float64]:
    """(size, cells) weights of bilinear upsampling; cell i is centred on pixel
    stride * (i + 0.5) - 0.5, and pixels past the last centre take the last cell."""
    pos = np.clip((np.arange(size) + 0.5) / stride - 0.5, 0, cells - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, cells - 1)
    frac = pos - lo
    w = np.zeros((size, cells))
    w[np.arange(size), lo] += 1.0 - frac
    w[np.arange(size), hi] += frac
    return w


def to_image(cells: Mapping[str, NDArray[np.floating]], size: int) -> NDArray[np.float64]:
    """Layer -> (h, w) contributions -> one (size, size) heatmap per pixel, layers summed."""
    total = np.zeros((size, size))
    for layer, grid in cells.items():
        g = np.asarray(grid, np.float64)
        stride = layer_stride(layer)
        rows = _interpolation(g.shape[0], stride, size)
        cols = _interpolation(g.shape[1], stride, size)
        total += rows @ g @ cols.T / float(stride * stride)
    return total


def combine_views(grids: Sequence[NDArray[np.floating]], views: Views | None,
                  sha256: str) -> NDArray[np.float64]:
    """Heatmaps of an image (first) and of its views -> one, in the image's orientation:
    each view's mapped back, averaged over the views that show each pixel."""
    from extractor.augment import unmake_view

    if views is None or not views:
        raise ValueError(f"{len(grids)} heatmaps of one image but no views to map them back")
    total = np.asarray(grids[0], np.float64).copy()
    weight = np.ones_like(total)
    for v, grid in enumerate(grids[1:], start=1):
        back, w = unmake_view(grid, sha256, v, views.seed, views.mode)
        total += back
        weight += w
    return total / weight


def grid_json(grid: NDArray[np.floating], digits: int = 4) -> list[list[float]]:
    """The grid as lists of floats, to `digits` significant digits of its largest value."""
    g = np.asarray(grid, np.float64)
    top = float(np.abs(g).max()) if g.size else 0.0
    decimals = digits - 1 - int(np.floor(np.log10(top))) if top > 0 else 0
    return np.round(g, max(decimals, 0)).tolist()


def jet(values: NDArray[np.floating]) -> NDArray[np.float64]:
    """The classic jet colour map (0 dark blue .. 1 dark red) as RGB in [0, 1], in numpy: the
    lean serving image has no matplotlib."""
    v = np.clip(np.asarray(values, np.float64), 0.0, 1.0)[..., None]
    centres = np.array([0.75, 0.5, 0.25])  # where red, green and blue peak
    return np.clip(1.5 - np.abs(4.0 * v - 4.0 * centres), 0.0, 1.0)


def overlay(pixels: NDArray[np.uint8], grid: NDArray[np.floating],
            alpha: float = 0.45) -> Image.Image:
    """The image with the heatmap's positive part (scaled to its maximum) over it, in jet."""
    from PIL import Image

    g = np.maximum(np.asarray(grid, np.float64), 0.0)
    top = float(g.max())
    heat = g / top if top > 0 else g
    out = (1.0 - alpha) * np.asarray(pixels, np.float64) + alpha * 255.0 * jet(heat)
    return Image.fromarray(np.clip(out, 0, 255).round().astype(np.uint8), "RGB")
