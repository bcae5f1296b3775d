"""The render operations: a closed grammar with bounded values.

``w_N`` and ``h_N`` (1..4096 pixels; at least one), ``fit_contain`` (the default: within
the box, never enlarged), ``fit_cover`` (fills the box, centred crop; needs both sides)
or ``fit_fill`` (exactly the box), ``f_webp`` (the default), ``f_jpeg`` or ``f_png``, and
``q_N`` (1..100, default 80; not for PNG). Each at most once, comma-separated, in any
order; anything else is refused."""

from __future__ import annotations

from dataclasses import dataclass

from uploader.kit.errors import ProblemError

MAX_SIDE = 4096
FITS = ("contain", "cover", "fill")
FORMATS = {"webp": "image/webp", "jpeg": "image/jpeg", "png": "image/png"}


@dataclass(frozen=True)
class RenderOps:
    width: int | None
    height: int | None
    fit: str = "contain"
    format: str = "webp"
    quality: int = 80

    @property
    def media_type(self) -> str:
        return FORMATS[self.format]

    @property
    def box(self) -> tuple[int | None, int | None]:
        return self.width, self.height

    def scale_of(self, width: int, height: int) -> float:
        """How much a ``width`` x ``height`` picture is scaled to make this render."""
        return fit_scale(width, height, self.box, self.fit)


def fit_scale(width: int, height: int, box: tuple[int | None, int | None], fit: str) -> float:
    """How much an upright ``width`` x ``height`` picture is scaled to meet ``box`` (either
    side may be None) by ``fit``: within it, never enlarged (``contain``), or the larger
    of the two ratios (``cover``, and ``fill``, whose draft must keep the larger side)."""
    box_w, box_h = box
    ratios = [r for r in (box_w / width if box_w else None, box_h / height if box_h else None) if r]
    if fit in ("cover", "fill"):
        return max(ratios)
    return min(1.0, *ratios)


def parse_ops(text: str) -> RenderOps:
    values: dict[str, str] = {}
    for token in text.split(","):
        key, underscore, value = token.partition("_")
        if not underscore or not value or key not in ("w", "h", "fit", "f", "q"):
            raise _invalid(f"{token!r} is not an operation (w_, h_, fit_, f_, q_)")
        if key in values:
            raise _invalid(f"{key}_ is given twice")
        values[key] = value
    width, height = _side(values, "w"), _side(values, "h")
    if width is None and height is None:
        raise _invalid("give w_ or h_ (or both)")
    fit = values.get("fit", "contain")
    if fit not in FITS:
        raise _invalid(f"fit_ is one of {', '.join(FITS)}")
    if fit != "contain" and (width is None or height is None):
        raise _invalid(f"fit_{fit} needs both w_ and h_")
    fmt = values.get("f", "webp")
    if fmt not in FORMATS:
        raise _invalid(f"f_ is one of {', '.join(FORMATS)}")
    quality = _number(values, "q", 1, 100)
    if quality is not None and fmt == "png":
        raise _invalid("q_ does not apply to PNG")
    return RenderOps(width, height, fit, fmt, quality if quality is not None else 80)


def _side(values: dict[str, str], key: str) -> int | None:
    return _number(values, key, 1, MAX_SIDE)


def _number(values: dict[str, str], key: str, low: int, high: int) -> int | None:
    if key not in values:
        return None
    text = values[key]
    if not text.isdigit() or len(text) > 5 or not low <= int(text) <= high:
        raise _invalid(f"{key}_ is a whole number from {low} to {high}, not {text!r}")
    return int(text)


def _invalid(message: str) -> ProblemError:
    return ProblemError("render.ops_invalid", message)
