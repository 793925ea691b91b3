"""The label vocabulary: class names plus the prompt templates used for zero-shot classification."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

__all__ = ["Vocabulary"]


def _as_str_tuple(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str) or not hasattr(value, "__iter__"):
        raise TypeError(f"{what} must be a sequence of strings, got {type(value).__name__}")
    items = tuple(value)
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise TypeError(f"{what}[{i}] must be a string, got {type(item).__name__}")
    return items


@dataclass(frozen=True)
class Vocabulary:
    """Class names and zero-shot prompt templates (each template holds one ``{}``).

    >>> v = Vocabulary(("cat", "dog"))
    >>> v.prompts()
    [['a photo of a cat.'], ['a photo of a dog.']]
    """

    classnames: tuple[str, ...]
    templates: tuple[str, ...] = ("a photo of a {}.",)

    def __post_init__(self) -> None:
        names = _as_str_tuple(self.classnames, "classnames")
        templates = _as_str_tuple(self.templates, "templates")
        if not names:
            raise ValueError("a Vocabulary needs at least one class name")
        for i, name in enumerate(names):
            if not name.strip():
                raise ValueError(f"classnames[{i}] is empty")
        seen: dict[str, int] = {}
        for i, name in enumerate(names):
            if name in seen:
                raise ValueError(f"duplicate class name {name!r} (positions {seen[name]} and {i})")
            seen[name] = i
        if not templates:
            raise ValueError("a Vocabulary needs at least one prompt template")
        for t in templates:
            if t.count("{}") != 1:
                raise ValueError(f"prompt template {t!r} must contain exactly one '{{}}'")
            try:
                t.format("x")
            except (IndexError, KeyError, ValueError) as exc:
                raise ValueError(f"prompt template {t!r} is not a valid format string: {exc}") from None
        # Frozen dataclass: normalise lists given by the caller to tuples (hashable, immutable).
        object.__setattr__(self, "classnames", names)
        object.__setattr__(self, "templates", templates)

    def __len__(self) -> int:
        return len(self.classnames)

    def prompts(self) -> list[list[str]]:
        """Per class, its prompts (one per template, in template order)."""
        return [[t.format(name) for t in self.templates] for name in self.classnames]

    def caption(self, labels: Any, template: int = 0) -> str:
        """A caption naming the classes ``labels`` (ids) in template ``template``:
        ``caption([3, 0])`` -> "a photo of a star and a circle."."""
        names = " and a ".join(self.classnames[int(c)] for c in labels)
        return self.templates[template % len(self.templates)].format(names)

    def index(self, name: str) -> int:
        """The class id of ``name``; ``ValueError`` naming it (and the known classes) if unknown."""
        try:
            return self.classnames.index(name)
        except ValueError:
            raise ValueError(
                f"unknown class {name!r}; the vocabulary has {list(self.classnames)}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self.classnames

    # --- files (the CLI's --vocab FILE) -------------------------------------------------------
    def to_dict(self) -> dict[str, list[str]]:
        return {"classnames": list(self.classnames), "templates": list(self.templates)}

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "vocabulary") -> Vocabulary:
        """From ``{"classnames": [...], "templates": [...]}`` (templates optional) or a plain list of names."""
        if isinstance(data, list):
            data = {"classnames": data}
        if not isinstance(data, dict):
            raise ValueError(
                f"{source}: expected a JSON object with 'classnames' (and optional 'templates') "
                f"or a list of class names, got {type(data).__name__}"
            )
        unknown = sorted(set(data) - {"classnames", "templates"})
        if unknown:
            raise ValueError(f"{source}: unknown keys {unknown}; expected 'classnames' and 'templates'")
        if "classnames" not in data:
            raise ValueError(f"{source}: missing required key 'classnames'")
        kwargs: dict[str, Any] = {"classnames": data["classnames"]}
        if "templates" in data:
            kwargs["templates"] = data["templates"]
        for key, value in kwargs.items():
            if not isinstance(value, list):
                raise ValueError(f"{source}: '{key}' must be a list of strings, got {type(value).__name__}")
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: {exc}") from None

    def to_json(self, path: str | os.PathLike[str]) -> None:
        """Write the vocabulary as JSON (``{"classnames": [...], "templates": [...]}``)."""
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh, indent=2, ensure_ascii=False)
            fh.write("\n")

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> Vocabulary:
        """Read a vocabulary file written by :meth:`to_json` (or a JSON list of class names).

        Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file for
        anything unreadable or malformed.
        """
        src = os.fspath(path)
        if not os.path.exists(src):
            raise FileNotFoundError(f"vocabulary file not found: {src}")
        try:
            with open(src, encoding="utf-8") as fh:
                data = json.load(fh)
        except UnicodeDecodeError as exc:
            raise ValueError(f"{src}: not a UTF-8 text file ({exc})") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{src}: invalid JSON ({exc})") from None
        except IsADirectoryError:
            raise ValueError(f"{src}: is a directory, expected a JSON vocabulary file") from None
        return cls.from_dict(data, source=src)
