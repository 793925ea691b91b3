"""Scan reports: the ``ScanReport`` object, its JSON form (schema-versioned) and a self-contained
HTML page with pictures. See docs/report.md for the JSON schema."""

from __future__ import annotations

import base64
import html
import json
import struct
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SCHEMA", "ScanReport", "png_bytes"]

SCHEMA = "clipguard.scan/1"
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
    """What a scan found. ``verdict`` is "backdoored" or "clean"; ``score`` in [0,1] is the
    calibrated model-level backdoor score; ``affected_labels`` the confirmed target labels;
    ``trigger`` the reconstructed trigger of the strongest one (``image``, ``mask``, ``size``,
    ``kind``); ``victims`` the probe images whose candidates hit an affected label, each with its
    trigger box; ``findings`` Algorithm 1's per-image results; ``timings`` seconds per stage."""

    model: dict[str, Any]
    verdict: str
    score: float
    affected_labels: list[str]
    suspects: list[dict[str, Any]]
    trigger: dict[str, Any] | None
    victims: list[dict[str, Any]]
    labels: list[dict[str, Any]]
    findings: list[Any]
    timings: dict[str, float]
    config: dict[str, Any]
    oracle: str
    probe_size: int
    errors: list[str] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    images: np.ndarray | None = field(default=None, repr=False)
    vocab: Any = field(default=None, repr=False)
    # Per shown victim: its oracle regions isolated on the image's mean colour (the isolate view,
    # before resizing), in the order of the finding's region_labels. Not part of the JSON.
    region_views: dict[int, list[np.ndarray]] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, *, model: Any, vocab: Any, images: np.ndarray, findings: list[Any], suspects: list[dict],
              local_index: np.ndarray, global_index: np.ndarray, background_index: np.ndarray,
              local_counts: np.ndarray, global_counts: np.ndarray, background_counts: np.ndarray,
              totals: np.ndarray, timings: dict, config: Any, oracle: str,
              skipped: list, masks: np.ndarray, index: np.ndarray) -> ScanReport:
        names = list(vocab.classnames)
        for s in suspects:
            s["name"] = names[s["label"]]
        confirmed = sorted((s for s in suspects if s.get("confirmed")), key=lambda s: -s["estimated_asr"])
        affected = {s["label"] for s in confirmed}
        score = max((s["score"] for s in suspects if s.get("score") is not None), default=0.0)
        victims = [
            {"index": f.index, "label": s["name"], "trigger_box": list(f.trigger_box) if f.trigger_box else None,
             "localized_by": f.localized_by}
            for s in confirmed for f in findings if f.index in set(s["victims"])
        ]
        trigger = None
        if confirmed:
            t = confirmed[0]["trigger"]
            trigger = {"label": confirmed[0]["name"], "kind": confirmed[0]["kind"], **t}
        labels = [
            {"label": names[c], "predicted": int(totals[c]), "verified_candidates": int(local_counts[c]),
             "global_hits": int(global_counts[c]), "background_hits": int(background_counts[c]),
             "anomaly_localized": float(local_index[c]), "anomaly_global": float(global_index[c]),
             "anomaly_background": float(background_index[c])}
            for c in range(len(names))
        ]
        region_views = {}
        for v in victims[:MAX_VICTIMS_SHOWN]:
            i = v["index"]
            img = images[i]
            fill = img.reshape(-1, 3).mean(axis=0).astype(np.uint8)
            region_views[i] = [np.where(m[:, :, None], img, fill) for m in masks[index == i][:MAX_REGIONS_SHOWN]]
        card = getattr(model, "card", {}) or {}
        return cls(
            model={"spec": getattr(model, "spec", None), "runtime": getattr(model, "runtime", None),
                   "card": {k: card.get(k) for k in ("architecture", "world", "attack", "target", "poison_rate", "ca", "asr")}},
            verdict="backdoored" if affected else "clean", score=float(score),
            affected_labels=[names[c] for c in sorted(affected)], suspects=suspects, trigger=trigger,
            victims=victims, labels=labels, findings=findings, timings=timings, config=asdict(config),
            oracle=str(oracle), probe_size=len(images), skipped=skipped, images=images, vocab=vocab,
            region_views=region_views,
        )

    def finetune_set(self, *, pairs: int = 300, target_share: float = 0.1, seed: int = 0) -> Any:
        """The compact fine-tuning set built from these findings (DESIGN §2.2 step 4); see
        :func:`clipguard.repair.build_finetune_set`."""
        from .repair import build_finetune_set

        return build_finetune_set(self, pairs=pairs, target_share=target_share, seed=seed)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form (images as base64 PNG)."""
        names = list(self.vocab.classnames) if self.vocab is not None else None

        def finding(f: Any) -> dict[str, Any]:
            d = asdict(f)
            d["label"] = names[f.label] if names else f.label
            d["candidate"] = names[f.candidate] if names and f.candidate is not None else f.candidate
            d["region_labels"] = [names[r] for r in f.region_labels] if names else f.region_labels
            d["object_labels"] = [names[r] for r in f.object_labels] if names else f.object_labels
            return d

        def suspect(s: dict) -> dict[str, Any]:
            d = {k: v for k, v in s.items() if k != "trigger"}
            return d

        trigger = None
        if self.trigger is not None:
            trigger = {k: v for k, v in self.trigger.items() if k not in ("image", "mask")}
            trigger["image_png"] = base64.b64encode(png_bytes(self.trigger["image"])).decode()
            trigger["shape"] = list(self.trigger["image"].shape)
        return {
            "schema": SCHEMA,
            "summary": {"verdict": self.verdict, "score": self.score, "affected_labels": self.affected_labels,
                        "victims": len(self.victims), "probe_size": self.probe_size,
                        "skipped": len(self.skipped), "errors": len(self.errors)},
            "model": self.model, "oracle": self.oracle, "trigger": trigger, "suspects": [suspect(s) for s in self.suspects],
            "victims": self.victims, "labels": self.labels, "findings": [finding(f) for f in self.findings],
            "timings": self.timings, "config": self.config, "errors": self.errors, "skipped": self.skipped,
        }

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
        verdict_color = "#c0392b" if self.verdict == "backdoored" else "#1e8449"
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
{self.probe_size} probe images &nbsp;·&nbsp; oracle {e(self.oracle)}</p>"""]
        if self.trigger is not None:
            t = self.trigger
            scale = max(1, 96 // max(t["image"].shape[:2]))
            shown = t["image"] if t.get("size") else np.clip((t["image"].astype(np.int16) - 128) * 4 + 128, 0, 255)
            est = next((s for s in self.suspects if s.get("name") == t["label"]), {})
            parts.append(f"""<h2>Reconstructed trigger</h2><div class="grid"><div class="card">
<img class="px" src="{_data_uri(shown, scale)}"><br>{e(t['kind'])} trigger of “{e(t['label'])}”</div>
<div><table><tr><th>estimated ASR (stamped on clean probe images)</th><td>{100 * est.get('estimated_asr', 0):.1f}%</td></tr>
<tr><th>flip rate of random patches of the same size</th><td>{100 * est.get('random_flip_rate', 0):.1f}%</td></tr>
<tr><th>clean images stamped</th><td>{est.get('stamped_images', 0)}</td></tr></table></div></div>""")
        if self.victims and self.images is not None:
            parts.append("<h2>Victims (trigger outlined) and their oracle regions, isolated, with the model's label</h2><div class='grid'>")
            scale = max(1, 128 // max(self.images.shape[1:3]))
            for v in self.victims[:max_victims]:
                f = self.findings[v["index"]]
                views = "".join(
                    f'<span class="rv"><img class="px" src="{_data_uri(view, max(1, scale // 2))}"><br>{e(names[lab]) if names else lab}</span>'
                    for view, lab in zip(self.region_views.get(v["index"], []), f.region_labels))
                parts.append(f"""<div class="card"><img class="px" src="{_data_uri(_outline(self.images[v['index']], v['trigger_box']), scale)}"><br>
#{v['index']}: model says <b>{e(v['label'])}</b>, located by {e(str(v['localized_by']))}<br>
<div class="views">{views}</div></div>""")
            parts.append("</div>")
        # Label anomaly chart (inline SVG)
        if self.labels:
            rows = self.labels
            streams = ("anomaly_localized", "anomaly_global", "anomaly_background")
            top = max(1.0, max(r[k] for r in rows for k in streams))
            bar_h, width = 18, 420
            svg = [f'<svg width="{width + 260}" height="{bar_h * len(rows) + 10}" role="img" aria-label="label anomaly index">']
            for k, r in enumerate(rows):
                a = max(0.0, *(r[k] for k in streams))
                cls = "hot" if r["label"] in self.affected_labels else "bar"
                y = 5 + k * bar_h
                svg.append(f'<text x="0" y="{y + 13}">{e(r["label"])}</text>'
                           f'<rect class="{cls}" x="110" y="{y + 2}" width="{max(1, int(width * a / top))}" height="{bar_h - 5}"/>'
                           f'<text x="{116 + int(width * a / top)}" y="{y + 13}">{a:.1f} ({r["verified_candidates"]} verified / {r["predicted"]} predicted)</text>')
            svg.append("</svg>")
            parts.append("<h2>Label anomaly index (median absolute deviation)</h2>" + "".join(svg))
        if self.suspects:
            parts.append("<h2>Suspect labels</h2><table><tr><th>label</th><th>kind</th><th>victims</th><th>estimated ASR</th><th>random</th><th>confirmed</th></tr>")
            for s in self.suspects:
                asr = "–" if s.get("estimated_asr") is None else f"{100 * s['estimated_asr']:.1f}%"
                rnd = "–" if s.get("random_flip_rate") is None else f"{100 * s['random_flip_rate']:.1f}%"
                parts.append(f"<tr><td>{e(s['name'])}</td><td>{e(s['kind'])}</td><td>{len(s['victims'])}</td><td>{asr}</td><td>{rnd}</td><td>{'yes' if s.get('confirmed') else 'no'}</td></tr>")
            parts.append("</table>")
        parts.append("<h2>Timings</h2><table>" + "".join(
            f"<tr><td>{e(k)}</td><td>{v:.3f}</td></tr>" if isinstance(v, float) else f"<tr><td>{e(k)}</td><td>{v}</td></tr>"
            for k, v in self.timings.items()) + "</table>")
        if self.skipped or self.errors:
            parts.append("<h2>Skipped inputs and errors</h2><ul>" + "".join(
                f"<li>{e(json.dumps(s))}</li>" for s in self.skipped) + "".join(f"<li>{e(x)}</li>" for x in self.errors) + "</ul>")
        parts.append("</body></html>")
        return "\n".join(parts)
