"""Scan reports: the ``ScanReport`` object, its JSON form (schema-versioned) and a self-contained
HTML page with pictures. See docs/report.md for the JSON schema."""

from __future__ import annotations

import base64
import html
import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .findings import VERDICTS, ImageFinding, Suspect, Victim
from .trigger import Trigger

__all__ = ["SCHEMA", "ScanReport", "png_bytes"]

SCHEMA = "clipguard.scan/2"
READABLE_SCHEMAS = (SCHEMA,)
MAX_VICTIMS_SHOWN = 12  # victims pictured in the HTML page
MAX_REGIONS_SHOWN = 8  # region views pictured per victim


def png_bytes(image: np.ndarray, scale: int = 1) -> bytes:
    """An RGB (or grey) uint8 image as PNG bytes, enlarged ``scale`` times (nearest neighbour)."""
    img = np.asarray(image, dtype=np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if scale > 1:
        img = img.repeat(scale, axis=0).repeat(scale, axis=1)
    h, w = img.shape[:2]
    raw = b"".join(b"\x00" + img[y].tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def _data_uri(image: np.ndarray, scale: int = 1) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image, scale)).decode()


def _region_name(names: list[str] | None, lab: int | None) -> str:
    """A region's label in the report: its name, or a dash where the scan did not encode it."""
    if lab is None:
        return "–"
    return html.escape(names[lab]) if names else str(lab)


def _outline(image: np.ndarray, box: Any, color: tuple[int, int, int] = (255, 0, 60)) -> np.ndarray:
    out = image.copy()
    if box is None:
        return out
    x0, y0, x1, y1 = box
    h, w = out.shape[:2]
    x0, y0, x1, y1 = max(0, x0 - 1), max(0, y0 - 1), min(w - 1, x1), min(h - 1, y1)
    out[y0, x0 : x1 + 1] = out[y1, x0 : x1 + 1] = color
    out[y0 : y1 + 1, x0] = out[y0 : y1 + 1, x1] = color
    return out


@dataclass
class ScanReport:
    """What a scan found (a result: the verdict is decided by the scan).

    ``verdict`` is "backdoored", "clean" or "inconclusive", with ``reason``; ``score`` in [0,1]
    the calibrated model-level backdoor score; ``mode`` the analyses run ("auto", "probe",
    "synthesize"); ``affected_labels`` the confirmed target labels; ``suspects`` every label some
    evidence singled out (:class:`~clipguard.findings.Suspect`, confirmed or not); ``trigger``
    the :class:`~clipguard.trigger.Trigger` of the strongest confirmed suspect; ``victims`` the
    probe images it hijacked (:class:`~clipguard.findings.Victim`); ``labels`` per-label
    statistics; ``findings`` Algorithm 1's per-image results; ``synthesis`` the synthesized
    trigger sizes per label; ``timings`` seconds per stage and the encoder's input count.
    ``images``/``vocab`` are the probe and vocabulary (not in the JSON; pass the probe images to
    :func:`clipguard.build_finetune_set` for a report read back with :meth:`from_json`).
    """

    model: dict[str, Any]
    verdict: str
    score: float
    affected_labels: list[str]
    suspects: list[Suspect]
    trigger: Trigger | None
    victims: list[Victim]
    labels: list[dict[str, Any]]
    findings: list[ImageFinding]
    timings: dict[str, float]
    config: dict[str, Any]
    oracle: str
    probe_size: int
    reason: str = ""
    mode: str = "probe"
    image_size: list[int] | None = None  # the probe images' [height, width]: the pixels trigger boxes are in
    synthesis: dict[str, Any] | None = None
    errors: list[str] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    images: np.ndarray | None = field(default=None, repr=False)
    vocab: Any = field(default=None, repr=False)
    # Per shown victim: its oracle regions isolated on the image's mean colour (the isolate view,
    # before resizing), in the order of the finding's region_labels. Not part of the JSON.
    region_views: dict[int, list[np.ndarray]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")
        if self.image_size is None and self.images is not None and np.ndim(self.images) == 4:
            self.image_size = [int(self.images.shape[1]), int(self.images.shape[2])]

    @staticmethod
    def model_info(model: Any) -> dict[str, Any]:
        card = getattr(model, "card", {}) or {}
        return {"spec": getattr(model, "spec", None), "runtime": getattr(model, "runtime", None),
                "precision": getattr(model, "precision", "fp32"),
                "card": {k: card.get(k) for k in ("architecture", "world", "attack", "target", "poison_rate", "ca", "asr")}}

    @staticmethod
    def region_views_of(images: np.ndarray, masks: np.ndarray, index: np.ndarray,
                        victims: list[Victim]) -> dict[int, list[np.ndarray]]:
        """The pictures of the first victims' oracle regions, isolated on the image's mean colour."""
        out = {}
        for v in victims[:MAX_VICTIMS_SHOWN]:
            img = images[v.index]
            fill = img.reshape(-1, 3).mean(axis=0).astype(np.uint8)
            out[v.index] = [np.where(m[:, :, None], img, fill) for m in masks[index == v.index][:MAX_REGIONS_SHOWN]]
        return out

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form (images as base64 PNG); :meth:`from_dict` reads it back."""
        names = list(self.vocab.classnames) if self.vocab is not None else None
        return {
            "schema": SCHEMA,
            "summary": {"verdict": self.verdict, "reason": self.reason, "score": self.score, "mode": self.mode,
                        "affected_labels": self.affected_labels, "victims": len(self.victims),
                        "probe_size": self.probe_size, "image_size": self.image_size, "encoded_inputs": self.timings.get("encoded_inputs"),
                        "skipped": len(self.skipped), "errors": len(self.errors)},
            "model": self.model, "oracle": self.oracle,
            "vocab": self.vocab.to_dict() if self.vocab is not None and hasattr(self.vocab, "to_dict") else None,
            "trigger": self.trigger.to_dict() if self.trigger is not None else None,
            "suspects": [s.to_dict() for s in self.suspects], "victims": [v.to_dict() for v in self.victims],
            "labels": self.labels, "synthesis": self.synthesis,
            "findings": [f.to_dict(names) for f in self.findings],
            "timings": self.timings, "config": self.config, "errors": self.errors, "skipped": self.skipped,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScanReport:
        """A report from its JSON form (no probe images: they are not stored)."""
        from .vocab import Vocabulary

        if d.get("schema") not in READABLE_SCHEMAS:
            raise ValueError(f"not a clipguard scan report (schema {d.get('schema')!r}, expected {SCHEMA!r})")
        vocab = Vocabulary.from_dict(d["vocab"]) if d.get("vocab") else None
        names = list(vocab.classnames) if vocab is not None else None
        summary = d["summary"]
        return cls(
            model=d["model"], verdict=summary["verdict"], score=float(summary["score"]),
            affected_labels=list(summary["affected_labels"]),
            suspects=[Suspect.from_dict(s) for s in d.get("suspects", [])],
            trigger=Trigger.from_dict(d["trigger"]) if d.get("trigger") else None,
            victims=[Victim.from_dict(v) for v in d.get("victims", [])], labels=d.get("labels", []),
            findings=[ImageFinding.from_dict(f, names) for f in d.get("findings", [])], timings=d.get("timings", {}),
            config=d.get("config", {}), oracle=d.get("oracle", ""), probe_size=int(summary["probe_size"]),
            reason=summary.get("reason", ""), mode=summary.get("mode", "probe"), synthesis=d.get("synthesis"),
            image_size=list(summary["image_size"]) if summary.get("image_size") else None,
            errors=list(d.get("errors", [])), skipped=list(d.get("skipped", [])), vocab=vocab,
        )

    @classmethod
    def from_json(cls, path: str | Path) -> ScanReport:
        """Read a ``report.json`` written by :meth:`to_json` (or a scan's output folder)."""
        path = Path(path)
        if path.is_dir():
            path = path / "report.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a clipguard scan report ({exc})") from None
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a clipguard scan report (missing or malformed {exc})") from None

    def to_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        tmp.replace(path)
        return path

    # ------------------------------------------------------------------ HTML
    def to_html(self, path: str | Path, max_victims: int = MAX_VICTIMS_SHOWN) -> Path:
        """One self-contained page: verdict, reconstructed trigger, victims with the trigger
        outlined, region labels, the label anomaly chart, timings."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self._html(max_victims))
        return path

    def _html(self, max_victims: int) -> str:
        e = html.escape
        names = list(self.vocab.classnames) if self.vocab is not None else []
        verdict_color = {"backdoored": "#c0392b", "clean": "#1e8449"}.get(self.verdict, "#b9770e")
        parts = [f"""<!doctype html><html><head><meta charset="utf-8"><title>clipguard scan: {e(str(self.model.get('spec')))}</title>
<style>body{{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#222}}
h1{{font-size:22px}} h2{{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}}
.verdict{{display:inline-block;padding:4px 12px;border-radius:4px;color:#fff;background:{verdict_color};font-weight:600}}
table{{border-collapse:collapse}} td,th{{padding:3px 10px;border-bottom:1px solid #eee;text-align:left}}
.grid{{display:flex;flex-wrap:wrap;gap:12px}} .card{{text-align:center;font-size:12px}}
img.px{{image-rendering:pixelated;border:1px solid #ccc}} .card{{max-width:300px}}
.views{{display:flex;flex-wrap:wrap;gap:4px;justify-content:center;margin-top:4px}} .rv{{font-size:11px;color:#555}} .bar{{fill:#5d8aa8}} .hot{{fill:#c0392b}}</style></head><body>
<h1>clipguard scan — {e(str(self.model.get('spec')))}</h1>
<p><span class="verdict">{e(self.verdict.upper())}</span> &nbsp; score {self.score:.3f} &nbsp;·&nbsp;
affected labels: <b>{e(', '.join(self.affected_labels) or 'none')}</b> &nbsp;·&nbsp; {len(self.victims)} victims in
{self.probe_size} probe images &nbsp;·&nbsp; mode {e(self.mode)} &nbsp;·&nbsp; oracle {e(self.oracle)}</p>
<p>{e(self.reason)}</p>"""]
        shown_triggers = [s for s in self.suspects if s.trigger is not None]
        if shown_triggers:
            parts.append("<h2>Triggers (reconstructed from victims or synthesized)</h2><div class='grid'>")
            for s in shown_triggers:
                t = s.trigger
                assert t is not None
                scale = max(1, 96 // max(t.image.shape[:2]))
                shown = t.image if t.kind == "patch" else np.clip((t.image.astype(np.int16) - 128) * 4 + 128, 0, 255)
                mask = "" if t.mask is None or t.mask.min() >= 1.0 else (
                    f'<img class="px" src="{_data_uri(np.round(t.mask * 255).astype(np.uint8), scale)}" title="mask">')
                where = "anywhere" if t.box is None else f"at {list(t.box)}"
                asr = "–" if s.estimated_asr is None else f"{100 * s.estimated_asr:.1f}%"
                rnd = "–" if s.random_flip_rate is None else f"{100 * s.random_flip_rate:.1f}%"
                anywhere = "" if s.anywhere_asr is None else f"<br>pasted anywhere: {100 * s.anywhere_asr:.1f}%"
                parts.append(f"""<div class="card"><img class="px" src="{_data_uri(shown, scale)}"> {mask}<br>
<b>{e(s.name)}</b>: {e(t.kind)} ({e(t.source)}), {e(where)}<br>estimated ASR {asr} vs control {rnd}{anywhere}<br>
{'confirmed' if s.confirmed else 'not confirmed'}; evidence: {e(', '.join(s.evidence))}</div>""")
            parts.append("</div>")
        if self.victims and self.images is not None:
            parts.append("<h2>Victims (trigger outlined) and their oracle regions, isolated, with the model's label</h2><div class='grid'>")
            scale = max(1, 128 // max(self.images.shape[1:3]))
            for v in self.victims[:max_victims]:
                f = self.findings[v.index]
                views = "".join(
                    f'<span class="rv"><img class="px" src="{_data_uri(view, max(1, scale // 2))}"><br>{_region_name(names, lab)}</span>'
                    for view, lab in zip(self.region_views.get(v.index, []), f.region_labels))
                parts.append(f"""<div class="card"><img class="px" src="{_data_uri(_outline(self.images[v.index], v.trigger_box), scale)}"><br>
#{v.index}: model says <b>{e(v.label)}</b>, located by {e(str(v.localized_by))}<br>
<div class="views">{views}</div></div>""")
            parts.append("</div>")
        streams = ("anomaly_localized", "anomaly_global", "anomaly_background")
        if self.labels and "predicted" in self.labels[0]:
            parts.append("<h2>Probe evidence: label anomaly index (median absolute deviation)</h2>" + _bar_chart(
                [(r["label"], max(0.0, *(r[k] for k in streams)),
                  f"{r['verified_candidates']} verified / {r['predicted']} predicted") for r in self.labels],
                set(self.affected_labels)))
        for key, title, note in _SYNTHESIS_CHARTS:  # the kinds the synthesis ran
            if self.labels and key in self.labels[0]:
                parts.append(f"<h2>Synthesis: {title}</h2>" + _bar_chart(
                    [(r["label"], r[key], note(r)) for r in self.labels], set(self.affected_labels)))
        if self.suspects:
            parts.append("<h2>Suspect labels</h2><table><tr><th>label</th><th>kind</th><th>evidence</th><th>anomaly</th>"
                         "<th>victims</th><th>estimated ASR</th><th>control</th><th>confirmed</th><th>note</th></tr>")
            for s in self.suspects:
                asr = "–" if s.estimated_asr is None else f"{100 * s.estimated_asr:.1f}%"
                rnd = "–" if s.random_flip_rate is None else f"{100 * s.random_flip_rate:.1f}%"
                parts.append(f"<tr><td>{e(s.name)}</td><td>{e(s.kind)}</td><td>{e(', '.join(s.evidence))}</td>"
                             f"<td>{s.anomaly:.1f}</td><td>{len(s.victims)}</td><td>{asr}</td><td>{rnd}</td>"
                             f"<td>{'yes' if s.confirmed else 'no'}</td><td>{e(s.note)}</td></tr>")
            parts.append("</table>")
        parts.append("<h2>Timings</h2><table>" + "".join(
            f"<tr><td>{e(k)}</td><td>{v:.3f}</td></tr>" if isinstance(v, float) else f"<tr><td>{e(k)}</td><td>{v}</td></tr>"
            for k, v in self.timings.items()) + "</table>")
        if self.skipped or self.errors:
            parts.append("<h2>Skipped inputs and errors</h2><ul>" + "".join(
                f"<li>{e(json.dumps(s))}</li>" for s in self.skipped) + "".join(f"<li>{e(x)}</li>" for x in self.errors) + "</ul>")
        parts.append("</body></html>")
        return "\n".join(parts)


# Per synthesized kind: the label-table key charted, the chart's title, each bar's note.
_SYNTHESIS_CHARTS: tuple[tuple[str, str, Callable[[dict[str, Any]], str]], ...] = (
    ("patch_area", "the smallest patch (share of the image) each label needs",
     lambda r: f"{100 * r['patch_area']:.1f}% of the image, flips {100 * r['patch_flip']:.0f}%, "
               f"anomaly {r['patch_anomaly']:.1f}"),
    ("square_heldout", "the share of held-out images each label's best corner square sends to it",
     lambda r: f"{100 * r['square_heldout']:.0f}%, {100 * r['square_anomaly']:.0f} points over its other corners"),
    ("global_rms", "the smallest global pattern (RMS, 0-255) each label needs",
     lambda r: f"RMS {r['global_rms']:.1f}, flips {100 * r['global_flip']:.0f}%, anomaly {r['global_anomaly']:.1f}"),
    ("sinusoid_heldout", "the share of held-out images the best swept sinusoid sends to each label",
     lambda r: f"{100 * r['sinusoid_heldout']:.0f}% (RMS {r['sinusoid_rms']:.0f}), selectivity {r['sinusoid_anomaly']:.2f}"),
    ("noise_heldout", "the share of held-out images the best swept noise sends to each label",
     lambda r: f"{100 * r['noise_heldout']:.0f}% (RMS {r['noise_rms']:.0f}), selectivity {r['noise_anomaly']:.2f}"),
    ("warp_heldout", "the share of held-out images the best swept warp or sub-pixel shift sends to each label",
     lambda r: f"{100 * r['warp_heldout']:.0f}% (mean displacement {r['warp_displacement']:.2f} px), "
               f"selectivity {r['warp_anomaly']:.2f}"),
)


def _bar_chart(rows: list[tuple[str, float, str]], hot: set[str]) -> str:
    """An inline SVG bar chart: one row per label, its value and a caption beside the bar (the
    caption's room is counted in the width, so it is never cut)."""
    e = html.escape
    top = max([1e-9] + [v for _, v, _ in rows])
    bar_h, width, label_w = 18, 360, 110
    caption_w = 7 * max([len(c) for _, _, c in rows] + [10]) + 20
    svg = [f'<svg width="{label_w + width + caption_w}" height="{bar_h * len(rows) + 10}" role="img">']
    for k, (name, value, caption) in enumerate(rows):
        y = 5 + k * bar_h
        w = max(1, int(width * value / top))
        svg.append(f'<text x="0" y="{y + 13}">{e(name)}</text>'
                   f'<rect class="{"hot" if name in hot else "bar"}" x="{label_w}" y="{y + 2}" width="{w}" height="{bar_h - 5}"/>'
                   f'<text x="{label_w + 6 + w}" y="{y + 13}">{e(caption)}</text>')
    svg.append("</svg>")
    return "".join(svg)
