"""Predicting a folder: bring the folder's feature cache up to date with an extraction engine
(local or Ray), with the head's feature settings, then predict from it (`classifier.predict`).

This sits above both the extractor's engines and the classifier (issue 17, item 3): classifier
predicts from a cache and imports no engine; the command that extracts before predicting
(`predict`, `featcache.predict_cli`) lives here. A second run over the same folder reuses the
cache and runs no model. A head trained on augmented views gets the same views of every file
extracted (its probabilities are then averaged over them by `classifier.predict`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from classifier.artifact import LoadedHead
from extractor import SpecMismatchError
from extractor.backbone import make_spec
from extractor.planner import Options, Summary
from extractor.weights import resolve_weights

if TYPE_CHECKING:
    from extractor.ray_engine import RayOptions

#: The hidden folder under DIR that holds predict's caches (the folder scan skips it).
CACHE_DIRNAME = ".featcache"


def default_cache(directory: Path, head: LoadedHead, tta: bool = True) -> Path:
    """`DIR/.featcache/<settings>.h5`: hidden, so the folder scan skips it; one per settings
    (layer, input size, weights, precision, and the views averaged over)."""
    s = head.spec
    parts = [s.backbone, s.layer, str(s.input_size), s.weights_sha256[:12]]
    if s.precision != "fp32":
        parts.append(f"{s.precision}-{s.quantized_sha256[:12]}")
    views = head.views if tta else None
    if views:
        parts.append(f"{views.mode}{views.count}" + (f"s{views.seed}" if views.mode == "recipe"
                                                    else ""))
    return directory / CACHE_DIRNAME / ("-".join(parts) + ".h5")




def extract_for_head(
    head: LoadedHead,
    directory: Path,
    cache: Path,
    *,
    weights: str | None = None,
    batch_size: int = 16,
    progress: bool = False,
    engine: str = "local",
    runtime: str = "auto",
    ray_options: RayOptions | None = None,
    tta: bool = True,
    precision: str | None = None,
) -> Summary:
    """Bring `cache` up to date with `directory`, with the head's feature settings (and, with
    `tta`, the views the head averages over).

    `precision` defaults to the head's; int8 uses the very int8 model the head was trained with
    (found by its hash)."""
    precision = precision or head.spec.precision
    views = head.views if tta else None
    if precision != head.spec.precision:
        raise ValueError(f"--precision {precision}: head {head.name!r} was trained on "
                         f"{head.spec.precision} features; leave out --precision or pass "
                         f"--precision {head.spec.precision}")
    weights_path = resolve_weights(weights)
    qsha = head.spec.quantized_sha256 or None
    if precision == "int8":
        runtime = "onnxruntime" if runtime == "auto" else runtime
    spec = make_spec(weights_path, head.spec.layer, head.spec.input_size, precision=precision,
                     quantized_sha256=qsha)
    diffs = spec.feed_differences(head.spec)
    if diffs:
        raise SpecMismatchError(
            f"weights {weights_path} do not make the features head {head.name} was trained on "
            f"({', '.join(diffs)} differ); pass the same --weights as its training cache")
    cache.parent.mkdir(parents=True, exist_ok=True)
    opts = Options(directory=directory, out=cache, weights=weights,
                   image_size=head.spec.input_size, layer=head.spec.layer,
                   batch_size=batch_size, progress=progress, runtime=runtime,
                   augment=views.count if views else 0,
                   augment_seed=views.seed if views else 0,
                   augment_mode=views.mode if views else "recipe",
                   precision=precision, quantized_sha256=qsha)
    if engine == "ray":
        from extractor.ray_engine import run as run_ray

        return run_ray(opts, ray_options)
    from extractor.runner import run

    return run(opts)


