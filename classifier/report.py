"""`evaluate --report`: the evaluation as one file a person opens or attaches to a ticket.

HTML (self-contained: figures and thumbnails are data: URIs, no script, nothing fetched) or PDF
(matplotlib's PdfPages). Every number is taken from `evaluate`'s metrics, the same document
`evaluate --json` prints (embedded whole in the HTML as `<script type="application/json"
id="evaluate-json">`); the curves come from classifier/curves.py on the same probabilities.

Heatmaps over the gallery's images: pass `overlay`, a function from an image file to a PNG
(e.g. the explain feature's overlay), and each thumbnail shows it beside the image.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from classifier.curves import reliability, risk_coverage, wilson_interval
from classifier.evaluation import Predictions

logger = logging.getLogger(__name__)

FORMATS = (".html", ".pdf")
#: image file -> PNG bytes of a heatmap over it, or None: the hook for the explain feature.
Overlay = Callable[[Path], bytes | None]
THUMBNAIL_PX = 160


@dataclass(frozen=True)
class Mistake:
    """A wrong answer: the image, its true class, what the head said and how sure it was."""

    path: str  # as in the cache: relative to the extracted folder
    file: Path | None  # where it is on this machine, when known
    true: str
    predicted: str
    confidence: float


def worst_mistakes(predictions: Predictions, classes: Sequence[str], limit: int = 12
                   ) -> list[Mistake]:
    """The most confident wrong answers first."""
    proba, y = predictions.proba, predictions.y
    if not len(y):
        return []
    predicted = proba.argmax(axis=1)
    confidence = proba.max(axis=1)
    wrong = np.flatnonzero(predicted != y)
    wrong = wrong[np.argsort(-confidence[wrong], kind="stable")][:limit]
    root = Path(predictions.source_dir) if predictions.source_dir else None
    return [Mistake(path=predictions.paths[i],
                    file=(root / predictions.paths[i]) if root is not None else None,
                    true=str(classes[y[i]]), predicted=str(classes[predicted[i]]),
                    confidence=float(confidence[i]))
            for i in wrong]


def check_report_path(path: Path) -> None:
    """Refuse a report path `write_report` cannot write, before any work is done."""
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"--report must name a .html or .pdf file. Got {str(path)!r} instead.")
    if not path.parent.is_dir():
        raise ValueError(f"--report {path}: the folder {path.parent} does not exist")


def write_report(path: str | os.PathLike[str], metrics: dict[str, Any],
                 predictions: Predictions, head_meta: dict[str, Any], *,
                 gallery: int = 12, overlay: Overlay | None = None) -> Path:
    """Write the report of `metrics` (`evaluate`'s) and the probabilities they came from;
    `head_meta` is the head's metadata.json. The suffix picks the format."""
    path = Path(path)
    check_report_path(path)
    classes = [str(c) for c in metrics["classes"]]
    numbers = summary(metrics, predictions)
    figures = _figures(metrics, predictions, classes, numbers)
    mistakes = worst_mistakes(predictions, classes, gallery)
    try:
        if path.suffix.lower() == ".pdf":
            _write_pdf(path, metrics, predictions, head_meta, numbers, figures, mistakes)
        else:
            html_text = _html(metrics, predictions, head_meta, numbers, figures, mistakes,
                              overlay)
            path.write_text(html_text, encoding="utf-8")
    finally:
        plt = _pyplot()
        for fig in figures.values():
            plt.close(fig)
    return path


# ---- numbers ---------------------------------------------------------------------------------

def summary(metrics: dict[str, Any], predictions: Predictions) -> dict[str, Any]:
    """The report's headline numbers: accuracy with its Wilson 95% interval, calibration
    error and the area under the risk-coverage curve; and the two curves they come from
    (`reliability`, `risk_coverage`), which the figures draw."""
    n = int(metrics["n"])
    correct = round(metrics["accuracy"] * n) if n else 0
    lo, hi = wilson_interval(correct, n)
    rc = risk_coverage(predictions.y, predictions.proba)
    rel = reliability(predictions.y, predictions.proba)
    return {"n": n, "correct": correct, "accuracy": metrics["accuracy"], "ci95": (lo, hi),
            "ece": rel.ece, "aurc": rc.aurc, "roc_auc": metrics.get("roc_auc"),
            "reliability": rel, "risk_coverage": rc}


def _head_facts(metrics: dict[str, Any], predictions: Predictions, head_meta: dict[str, Any]
                ) -> list[tuple[str, str]]:
    spec = head_meta.get("spec", {})
    data = head_meta.get("data", {})
    facts = [
        ("head", f"{metrics['head']} ({head_meta.get('kind', '?')})"),
        ("classes", ", ".join(str(c) for c in metrics["classes"])),
        ("features read", ", ".join(head_meta.get("features", [])) or "?"),
        ("feature spec", ", ".join(f"{k} {spec[k]}" for k in (
            "backbone", "layer", "input_size", "precision") if k in spec)
         + (f", weights sha256 {str(spec['weights_sha256'])[:12]}…"
            if spec.get("weights_sha256") else "")),
        ("trained on", f"{data.get('train_images', '?')} images "
                       f"({data.get('train_size', '?')} rows), validated on "
                       f"{data.get('validation_size', '?')}"),
    ]
    selection = head_meta.get("selection")
    if selection:
        best = selection["chosen"]
        params = {k: v for k, v in best["params"].items() if k in ("C", "layers")}
        facts.append(("CV selection", f"{len(selection['candidates'])} settings, "
                      f"{selection['folds']}-fold; chosen {best['kind']} {params}: CV accuracy "
                      f"{best['cv_accuracy_mean']:.4f} ± {best['cv_accuracy_std']:.4f}"))
    else:
        facts.append(("CV selection", "none (fixed parameters)"))
    attrs = predictions.cache_attrs
    facts += [
        ("cache", f"{metrics['cache']}: {metrics['images']} labelled images"
                  + (f", probabilities averaged over {metrics['views_averaged']} views"
                     if metrics["views_averaged"] > 1 else "")),
        ("cache made from", f"{attrs.get('source_dir', '?')} on {attrs.get('created', '?')}, "
                            f"{attrs.get('runtime', '?')} runtime, "
                            f"featcache {attrs.get('package_version', '?')}"),
    ]
    return facts


# ---- figures ---------------------------------------------------------------------------------

def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    return plt


def _figures(metrics: dict[str, Any], predictions: Predictions, classes: list[str],
             numbers: dict[str, Any]) -> dict[str, Any]:
    plt = _pyplot()
    y, proba = predictions.y, predictions.proba
    out: dict[str, Any] = {}

    from classifier.plots import confusion_figure

    fig = confusion_figure(metrics["confusion_matrix"], classes, "Confusion matrix")
    out["confusion matrix"] = fig

    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(4.5, 4))
    shown = [1] if len(classes) == 2 else range(len(classes))
    for k in shown:
        positives = y == k
        if positives.all() or not positives.any():
            continue  # a curve needs both positives and negatives
        fpr, tpr, _ = roc_curve(positives, proba[:, k])
        ax.plot(fpr, tpr, label=f"{classes[k]} vs rest" if len(classes) > 2 else classes[k])
    ax.plot([0, 1], [0, 1], ":", color="grey", label="chance")
    auc = metrics.get("roc_auc")
    ax.set_title("ROC" + (f" (AUC {auc:.4f})" if auc is not None else ""))
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    out["ROC"] = fig

    rel = numbers["reliability"]
    fig, ax = plt.subplots(figsize=(4.5, 4))
    centres = (rel.edges[:-1] + rel.edges[1:]) / 2
    filled = rel.count > 0
    ax.bar(centres[filled], rel.accuracy[filled], width=np.diff(rel.edges)[filled],
           edgecolor="black", alpha=0.7, label="accuracy in bin")
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    ax.plot(rel.confidence[filled], rel.accuracy[filled], "o", color="C1",
            label="mean confidence")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"Reliability (ECE {rel.ece:.4f})")
    ax.set_xlabel("confidence (top class probability)")
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    out["reliability"] = fig

    rc = numbers["risk_coverage"]
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.step(np.r_[0.0, rc.coverage], np.r_[rc.risk[:1], rc.risk], where="post")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.set_title(f"Risk-coverage (AURC {rc.aurc:.4f})")
    ax.set_xlabel("coverage (share answered, most confident first)")
    ax.set_ylabel("error rate among answered")
    fig.tight_layout()
    out["risk-coverage"] = fig
    return out


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _thumbnail(file: Path) -> bytes | None:
    """A PNG thumbnail of an image file, or None when it cannot be read (moved, deleted)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(file) as opened:
            im = ImageOps.exif_transpose(opened)
            im.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
            buf = io.BytesIO()
            im.convert("RGB").save(buf, format="PNG")
            return buf.getvalue()
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        logger.warning("report: no thumbnail of %s (%s)", file, exc)
        return None


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# ---- HTML ------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
 max-width:60rem;margin:0 auto;padding:1rem;color:#1b1f24;line-height:1.4}
table{border-collapse:collapse;margin:.5rem 0}
th,td{border:1px solid #d0d7de;padding:.25rem .5rem;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.figures{display:flex;flex-wrap:wrap;gap:1rem}
.figures figure{margin:0} .figures img{max-width:100%;height:auto}
.gallery{display:flex;flex-wrap:wrap;gap:1rem;list-style:none;padding:0}
.gallery li{width:12rem;border:1px solid #d0d7de;border-radius:.4rem;padding:.4rem}
.gallery img{max-width:100%;height:auto;display:block}
.gallery a{overflow-wrap:anywhere;font-size:.85rem}
.muted{color:#57606a}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.4f}"


def _html(metrics: dict[str, Any], predictions: Predictions, head_meta: dict[str, Any],
          s: dict[str, Any], figures: dict[str, Any], mistakes: list[Mistake],
          overlay: Overlay | None) -> str:
    classes = [str(c) for c in metrics["classes"]]
    lo, hi = s["ci95"]
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>featcache evaluation: {_e(Path(metrics['head']).name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Evaluation of {_e(Path(metrics['head']).name)}</h1>",
        "<h2>Head and cache</h2><table><tbody>",
        *(f"<tr><th scope=\"row\">{_e(k)}</th><td>{_e(v)}</td></tr>"
          for k, v in _head_facts(metrics, predictions, head_meta)),
        "</tbody></table>",
        "<h2>Accuracy</h2><table><tbody>",
        f'<tr><th scope="row">accuracy</th><td class="num" id="accuracy" '
        f'data-value="{metrics["accuracy"]!r}">{_fmt(metrics["accuracy"])}</td></tr>',
        f'<tr><th scope="row">95% interval (Wilson)</th><td class="num" id="accuracy-ci">'
        f"{_fmt(lo)} – {_fmt(hi)}</td></tr>",
        f'<tr><th scope="row">correct</th><td class="num" id="correct">{s["correct"]} of '
        f'<span id="n">{s["n"]}</span></td></tr>',
    ]
    if s["roc_auc"] is not None:
        parts.append(f'<tr><th scope="row">ROC AUC</th><td class="num" id="roc-auc" '
                     f'data-value="{s["roc_auc"]!r}">{_fmt(s["roc_auc"])}</td></tr>')
    parts += [
        f'<tr><th scope="row">expected calibration error (10 bins)</th><td class="num" '
        f'id="ece">{_fmt(s["ece"])}</td></tr>',
        f'<tr><th scope="row">area under the risk-coverage curve</th><td class="num" '
        f'id="aurc">{_fmt(s["aurc"])}</td></tr>',
        "</tbody></table>",
        '<h2>Per class</h2><table id="per-class"><thead><tr><th scope="col">class</th>'
        '<th scope="col">precision</th><th scope="col">recall</th><th scope="col">F1</th>'
        '<th scope="col">support</th></tr></thead><tbody>',
    ]
    for name in classes:
        c = metrics["per_class"][name]
        parts.append(f'<tr data-class="{_e(name)}"><th scope="row">{_e(name)}</th>'
                     + "".join(f'<td class="num" data-key="{k}" data-value="{c[k]!r}">'
                               f"{_fmt(c[k])}</td>" for k in ("precision", "recall", "f1"))
                     + f'<td class="num" data-key="support" data-value="{c["support"]}">'
                       f'{c["support"]}</td></tr>')
    parts += [
        "</tbody></table>",
        '<h2>Confusion matrix</h2><p class="muted">Rows: true class; columns: predicted.</p>',
        '<table id="confusion"><thead><tr><td></td>',
        *(f'<th scope="col">{_e(n)}</th>' for n in classes),
        "</tr></thead><tbody>",
    ]
    for name, row in zip(classes, metrics["confusion_matrix"], strict=True):
        parts.append(f'<tr><th scope="row">{_e(name)}</th>'
                     + "".join(f'<td class="num">{v}</td>' for v in row) + "</tr>")
    parts += ["</tbody></table>", '<h2>Figures</h2><div class="figures">']
    for title, fig in figures.items():
        parts.append(f'<figure><img src="{_data_uri(_png(fig))}" alt="{_e(title)} plot">'
                     f"<figcaption>{_e(title)}</figcaption></figure>")
    parts.append("</div>")
    parts += _gallery_html(mistakes, overlay)
    # The whole `evaluate --json` document, for scripts; "</" escaped so it cannot end the tag.
    doc = json.dumps(metrics, indent=1, allow_nan=True).replace("</", "<\\/")
    parts += [f'<script type="application/json" id="evaluate-json">{doc}</script>',
              "</body></html>"]
    return "\n".join(parts)


def _gallery_html(mistakes: list[Mistake], overlay: Overlay | None) -> list[str]:
    parts = ["<h2>Most confident mistakes</h2>"]
    if not mistakes:
        return [*parts, '<p id="no-mistakes">No image was misclassified.</p>']
    parts.append('<ol class="gallery" id="mistakes">')
    for m in mistakes:
        thumb = _thumbnail(m.file) if m.file is not None else None
        heat = overlay(m.file) if overlay is not None and m.file is not None else None
        href = m.file.resolve().as_uri() if m.file is not None else None
        item = ["<li>"]
        if thumb is not None:
            item.append(f'<img src="{_data_uri(thumb)}" alt="{_e(m.path)}: true {_e(m.true)}, '
                        f'predicted {_e(m.predicted)}">')
        else:
            item.append('<p class="muted">(image file not found)</p>')
        if heat is not None:
            item.append(f'<img class="heatmap" src="{_data_uri(heat)}" '
                        f'alt="heatmap of {_e(m.path)}">')
        link = (f'<a href="{_e(href)}">{_e(m.path)}</a>' if href else _e(m.path))
        item.append(f"{link}<br>true <b>{_e(m.true)}</b>, predicted <b>{_e(m.predicted)}</b> "
                    f"({m.confidence:.1%})</li>")
        parts.append("".join(item))
    parts.append("</ol>")
    return parts


# ---- PDF -------------------------------------------------------------------------------------

def _write_pdf(path: Path, metrics: dict[str, Any], predictions: Predictions,
               head_meta: dict[str, Any], s: dict[str, Any], figures: dict[str, Any],
               mistakes: list[Mistake]) -> None:
    from matplotlib.backends.backend_pdf import PdfPages

    plt = _pyplot()
    classes = [str(c) for c in metrics["classes"]]
    lo, hi = s["ci95"]
    lines = [f"Evaluation of {Path(metrics['head']).name}", ""]
    lines += [f"{k}: {v}" for k, v in _head_facts(metrics, predictions, head_meta)]
    lines += ["", f"accuracy {_fmt(metrics['accuracy'])} (95% Wilson interval {_fmt(lo)} - "
              f"{_fmt(hi)}), {s['correct']} of {s['n']} correct"]
    if s["roc_auc"] is not None:
        lines.append(f"ROC AUC {_fmt(s['roc_auc'])}")
    lines += [f"ECE {_fmt(s['ece'])}, AURC {_fmt(s['aurc'])}", "",
              f"{'class':<16}{'precision':>10}{'recall':>10}{'F1':>10}{'support':>9}"]
    for name in classes:
        c = metrics["per_class"][name]
        lines.append(f"{name[:15]:<16}{c['precision']:>10.4f}{c['recall']:>10.4f}"
                     f"{c['f1']:>10.4f}{c['support']:>9d}")
    with PdfPages(path) as pdf:
        page = plt.figure(figsize=(8.27, 11.69))  # A4
        page.text(0.05, 0.97, "\n".join(lines), va="top", family="monospace", fontsize=8,
                  wrap=True)
        pdf.savefig(page)
        plt.close(page)
        for fig in figures.values():
            pdf.savefig(fig)
        shown = [(m, _thumbnail(m.file) if m.file is not None else None) for m in mistakes]
        if shown:
            cols = 4
            rows = math.ceil(len(shown) / cols)
            fig, axes = plt.subplots(rows, cols, figsize=(8.27, 2.4 * rows + 0.6), squeeze=False)
            fig.suptitle("Most confident mistakes")
            from PIL import Image

            for ax, (m, png) in zip(axes.flat, shown, strict=False):
                if png is not None:
                    ax.imshow(np.asarray(Image.open(io.BytesIO(png))))
                ax.set_title(f"{Path(m.path).name[:24]}\ntrue {m.true}, said {m.predicted} "
                             f"({m.confidence:.0%})", fontsize=7)
            for ax in axes.flat:
                ax.axis("off")
            fig.tight_layout()
            pdf.savefig(fig)
            plt.close(fig)
