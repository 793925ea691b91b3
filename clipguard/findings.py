"""The scan's typed results: what Algorithm 1 found per image, the suspects and victims of
Algorithm 2 and of the synthesis. Each has ``to_dict()`` (JSON-ready) and ``from_dict()``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Sequence

from .trigger import Box, Trigger

__all__ = ["ImageFinding", "Suspect", "Victim", "VERDICTS"]

VERDICTS = ("backdoored", "clean", "inconclusive")


def _names(names: Sequence[str] | None, ids: Sequence[int | None]) -> list[Any]:
    return [names[i] if i is not None else None for i in ids] if names else list(ids)


@dataclass
class ImageFinding:
    """What Algorithm 1 found in one probe image (label ids index the vocabulary)."""

    index: int
    label: int  # the model's top-1 label for the whole image
    prob: float
    regions: int  # oracle regions kept
    grounded: bool
    candidate: int | None = None  # ungrounded label
    verified: bool = False  # occluding some region or window removes the candidate
    trigger_box: Box | None = None  # where the trigger is (x0, y0, x1, y1), if localized
    localized_by: str | None = None  # "region", "window" or "match" (a copy of the reconstructed patch)
    region_labels: list[int | None] = field(default_factory=list)  # isolate-view top-1 per region (None: not encoded)
    object_labels: list[int] = field(default_factory=list)  # the same, object-sized regions encoded only
    global_share: float = 0.0  # share of regions whose isolate view shows `label` (one not encoded does not)
    background_holds: bool = False  # the label still shows (p >= background_prob) with all regions occluded (False: not encoded)

    def to_dict(self, names: Sequence[str] | None = None) -> dict[str, Any]:
        d = asdict(self)
        d["label"] = names[self.label] if names else self.label
        d["candidate"] = names[self.candidate] if names and self.candidate is not None else self.candidate
        d["region_labels"] = _names(names, self.region_labels)
        d["object_labels"] = _names(names, self.object_labels)
        d["trigger_box"] = list(self.trigger_box) if self.trigger_box else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], names: Sequence[str] | None = None) -> ImageFinding:
        index = {n: i for i, n in enumerate(names or [])}

        def lab(v: Any) -> Any:
            return index[v] if isinstance(v, str) else v  # None stays None (a region not encoded)

        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["label"] = lab(d["label"])
        kw["candidate"] = None if d.get("candidate") is None else lab(d["candidate"])
        kw["region_labels"] = [lab(v) for v in d.get("region_labels", [])]
        kw["object_labels"] = [lab(v) for v in d.get("object_labels", [])]
        kw["trigger_box"] = tuple(d["trigger_box"]) if d.get("trigger_box") else None
        return cls(**kw)


@dataclass
class Victim:
    """A probe image whose label was hijacked by an affected label's trigger."""

    index: int
    label: str
    trigger_box: Box | None
    localized_by: str | None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["trigger_box"] = list(self.trigger_box) if self.trigger_box else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Victim:
        return cls(index=int(d["index"]), label=d["label"],
                   trigger_box=tuple(d["trigger_box"]) if d.get("trigger_box") else None,  # type: ignore[arg-type]
                   localized_by=d.get("localized_by"))


@dataclass
class Suspect:
    """A label some evidence singles out, and what its confirmation measured.

    ``kind``: "localized" or "global" (the trigger's shape). ``evidence``: which analyses point at
    it -- "probe" (Algorithms 1-2 on the probe set) and/or "synthesis" (a far smaller synthesized
    trigger than the other labels need, or one that flips held-out images). ``anomaly``: the
    strongest anomaly index behind it; ``heldout``: the synthesized trigger's flip rate on held-out
    images when it was screened (synthesis only).
    ``estimated_asr``: the trigger stamped on held-out clean images; ``random_flip_rate``: the
    same for a random control; ``anywhere_asr``: a patch pasted at random places instead of
    where the victims carry it. ``confirmed`` when the estimated ASR beats the control by the
    margin and no check of what the trigger is ``rejected`` it (the oracle's, for a synthesized
    patch; the victims' ``shared_pattern``, for a global trigger from the probe; fine noise beside
    a confirmed warp); ``score`` the
    calibrated backdoor score in [0,1].
    """

    label: int
    name: str
    kind: str
    evidence: list[str]
    victims: list[int] = field(default_factory=list)
    anomaly: float = 0.0
    heldout: float | None = None
    trigger: Trigger | None = None
    estimated_asr: float | None = None
    random_flip_rate: float | None = None
    anywhere_asr: float | None = None
    stamped_images: int = 0
    confirmed: bool = False
    score: float | None = None
    oracle_check: dict[str, Any] | None = None
    shared_pattern: float | None = None
    rejected: bool = False
    note: str = ""

    def reject(self, why: str) -> None:
        """A check of what the trigger is failed: not confirmed whatever it flipped, scored below
        the verdict, and no vouching for the other analysis (:func:`~clipguard.aggregate.merge`)."""
        self.rejected, self.confirmed, self.score = True, False, min(0.49, self.score or 0.0)
        self.note = why

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "trigger"}
        d["trigger"] = self.trigger.to_dict() if self.trigger is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Suspect:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["trigger"] = Trigger.from_dict(d["trigger"]) if d.get("trigger") else None
        return cls(**kw)
