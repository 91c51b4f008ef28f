"""`featcache info FILE`: what a feature cache or a head holds, as a dict and as text.

Reads metadata only: a cache's attributes and dataset headers (no features), a head's
metadata.json (the model is not loaded), so it takes the same time on any size and never loads
TensorFlow. A merged Ray cache whose shards are gone is still described, with
the missing shards listed: that is when it is wanted.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

#: Skipped files listed in the text form (the JSON form lists them all).
TEXT_SKIPPED = 20


class InfoError(ValueError):
    """The path is neither a feature cache nor a head."""


def describe(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A cache file's or a head folder's description (`featcache info --json`)."""
    target = Path(path)
    if target.is_dir():
        return describe_head(target)
    if not target.exists():
        raise InfoError(f"no such file or folder: {target}")
    return describe_cache(target)


def describe_head(path: Path) -> dict[str, Any]:
    from classifier.artifact import read_metadata

    meta = read_metadata(path)
    selection = meta.get("selection")
    if selection:
        selection = {
            "method": selection.get("method"), "folds": selection.get("folds"),
            "metric": selection.get("metric"),
            "averaged_over_views": selection.get("averaged_over_views"),
            "chosen": _cv_row(selection["chosen"]),
            "candidates": [_cv_row(c) for c in selection.get("candidates", [])],
        }
    metrics = {name: {k: v for k, v in m.items() if k != "confusion_matrix"}
               for name, m in (meta.get("metrics") or {}).items()}
    data = meta.get("data") or {}
    return {
        "type": "head",
        "path": str(path),
        "name": meta.get("name", path.name),
        "kind": meta["kind"],
        "classes": meta["classes"],
        "features": meta.get("features") or [],
        "views": meta.get("views"),
        "tta": bool(meta.get("tta")),
        "spec": meta["spec"],
        "params": meta.get("params", {}),
        "metrics": metrics,
        "selection": selection,
        "data": {k: data[k] for k in ("train_cache", "train_images", "train_size",
                                      "validation", "validation_size") if k in data},
        "model_file": meta.get("model_file"),
        "model_sha256": meta.get("model_sha256"),
        "created": meta.get("created"),
        "train_seconds": meta.get("train_seconds"),
        "versions": meta.get("versions", {}),
    }


def _cv_row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("kind", "params", "cv_accuracy_mean", "cv_accuracy_std")
            if k in row}


def describe_cache(path: Path) -> dict[str, Any]:
    import h5py
    import numpy as np

    from extractor.augment import Views
    from extractor.cache import (
        missing_sources,
        open_cache,
        virtual_source_files,
    )

    with open_cache(path, check_sources=False) as cache:  # refuses files that are no cache
        attrs = cache.attrs
        spec = cache.spec
        views = cache.views
        labels = cache.labels
        names = cache.class_names
        skipped = cache.skipped
    datasets: list[dict[str, Any]] = []
    dimensions: dict[str, int] = {}

    def visit(name: str, obj: object) -> None:
        if not isinstance(obj, h5py.Dataset):
            return
        if h5py.h5ds.is_scale(obj.id):
            dimensions[name] = int(obj.shape[0])
            return
        datasets.append({
            "name": name, "shape": list(obj.shape), "dtype": _dtype(obj),
            "dims": [dim.label or None for dim in obj.dims],
            "compression": obj.compression, "virtual": bool(obj.is_virtual),
        })

    with h5py.File(path, "r") as f:
        f.visititems(visit)
        shards = virtual_source_files(f)
        missing = [str(p) for p in missing_sources(f, path)]
    images = views == 0
    augment = Views.from_attrs(attrs)
    classes = [{"name": n, "images": int(np.sum(labels[images] == i))}
               for i, n in enumerate(names)]
    return {
        "type": "cache",
        "path": str(path),
        "size_bytes": path.stat().st_size,
        "format": attrs.get("format"),
        "rows": len(labels),
        "images": int(images.sum()),
        "unlabelled_images": int(np.sum(labels[images] < 0)),
        "classes": classes,
        "views": {"per_image": augment.count, "mode": augment.mode or "none",
                  "seed": augment.seed},
        "spec": spec.to_dict(),
        "features": spec.available_names(),
        "pooled_layers": list(spec.pooled_layers),
        "precision": spec.precision,
        "datasets": datasets,
        "dimensions": dimensions,
        "skipped": [{"path": p, "reason": r} for p, r in skipped],
        "engine": attrs.get("engine", "local"),
        "shards": {"files": len(shards), "missing": missing} if shards else None,
        "source_dir": attrs.get("source_dir"),
        "weights_file": attrs.get("weights_file"),
        "cpu": attrs.get("cpu"),
        "int8_weights": attrs.get("int8_weights"),
        "created": attrs.get("created"),
        "package_version": attrs.get("package_version"),
    }


def _source_kind(d: dict[str, Any]) -> str:
    """`row` for the row files of an appended-to cache, `shard` for a Ray merge's shards."""
    return "row" if any(ds["name"] == "row_file" for ds in d["datasets"]) else "shard"


def _dtype(ds: Any) -> str:
    import h5py

    if h5py.check_string_dtype(ds.dtype) is not None:
        return "string"
    return str(ds.dtype)


def format_description(d: dict[str, Any]) -> str:
    """The text `featcache info` prints."""
    return _format_head(d) if d["type"] == "head" else _format_cache(d)


def _format_cache(d: dict[str, Any]) -> str:
    spec = d["spec"]
    classes = ", ".join(f"{c['name']} ({c['images']})" for c in d["classes"]) or "none"
    views = d["views"]
    lines = [
        f"cache:      {d['path']} ({d['size_bytes']:,} bytes, {d['format']})",
        f"rows:       {d['rows']} ({d['images']} images"
        + (f" + {views['per_image']} {views['mode']} views each, seed {views['seed']})"
           if views["per_image"] else ")"),
        f"classes:    {classes}"
        + (f"; unlabelled: {d['unlabelled_images']}" if d["unlabelled_images"] else ""),
        f"spec:       {spec['backbone']} {spec['layer']} {tuple(spec['feature_shape'])} at "
        f"{spec['input_size']}x{spec['input_size']}, {spec['precision']}"
        + (f" (int8 model {spec['quantized_sha256'][:12]})" if spec["quantized_sha256"] else "")
        + f", runtime {spec['runtime']}, weights {spec['weights_sha256'][:12]}",
        f"pooled:     {', '.join(d['pooled_layers']) or 'none'}",
        f"features:   {', '.join(d['features'])}",
        *([f"int8:       weights {d.get('int8_weights') or 'not recorded'}, made on "
           f"{d.get('cpu') or 'an unrecorded CPU'}"] if spec["quantized_sha256"] else []),
        f"engine:     {d['engine']}"
        + (f" ({d['shards']['files']} {_source_kind(d)} files, "
           f"{len(d['shards']['missing'])} missing)"
           if d["shards"] else ""),
        "datasets:",
    ]
    width = max(len(ds["name"]) for ds in d["datasets"])
    for ds in d["datasets"]:
        shape = "(" + ", ".join(str(n) for n in ds["shape"]) + ")"
        dims = "(" + ", ".join(n or "?" for n in ds["dims"]) + ")"
        extra = [x for x in (ds["compression"], "virtual" if ds["virtual"] else None) if x]
        lines.append(f"  {ds['name']:<{width}}  {shape:<18} {ds['dtype']:<8} {dims}"
                     + (f" [{', '.join(extra)}]" if extra else ""))
    for missing in (d["shards"] or {}).get("missing", []):
        lines.append(f"missing shard: {missing} (its rows would read as NaN)")
    lines.append(f"skipped:    {len(d['skipped'])} files")
    for s in d["skipped"][:TEXT_SKIPPED]:
        lines.append(f"  {s['path']}: {s['reason']}")
    if len(d["skipped"]) > TEXT_SKIPPED:
        lines.append(f"  ... and {len(d['skipped']) - TEXT_SKIPPED} more (--json lists all)")
    lines.append(f"created:    {d['created']} by featcache {d['package_version']}"
                 + (f" from {d['source_dir']}" if d["source_dir"] else ""))
    return "\n".join(lines)


def _format_head(d: dict[str, Any]) -> str:
    spec = d["spec"]
    views = d["views"]
    lines = [
        f"head:       {d['path']} ({d['kind']}, {d['model_file']})",
        f"classes:    {', '.join(d['classes'])}",
        f"features:   {', '.join(d['features'])}",
        "views:      " + (f"averages over the image and {views['count']} {views['mode']} "
                          f"views (seed {views['seed']})" if d["tta"] and views
                          else "none (each image alone)"),
        f"spec:       {spec['backbone']} {spec['layer']} at {spec['input_size']}x"
        f"{spec['input_size']}, {spec.get('precision', 'fp32')}, weights "
        f"{spec['weights_sha256'][:12]}",
        f"params:     {', '.join(f'{k}={v}' for k, v in d['params'].items())}",
    ]
    for name in ("train", "validation"):
        m = d["metrics"].get(name)
        if m:
            auc = f", ROC AUC {m['roc_auc']:.4f}" if m.get("roc_auc") is not None else ""
            lines.append(f"{name + ':':<12}accuracy {m['accuracy']:.4f} on {m['n']} images{auc}")
    sel = d["selection"]
    if sel:
        c = sel["chosen"]
        lines.append(f"selection:  {sel['folds']}-fold CV over {len(sel['candidates'])} settings;"
                     f" chosen {c['kind']} {_short(c['params'])}: "
                     f"{c['cv_accuracy_mean']:.4f} ± {c['cv_accuracy_std']:.4f}")
    else:
        lines.append("selection:  none (settings as given)")
    lines.append(f"created:    {d['created']}, trained in {d['train_seconds']} s")
    return "\n".join(lines)


def _short(params: dict[str, Any]) -> str:
    return str({k: v for k, v in params.items() if k in ("C", "layers", "kernel")})
