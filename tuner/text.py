"""Small wording helpers shared by the modules that talk to a user."""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """An exception's first line (its type's name when it has no message)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def split_name(split: str) -> str:
    """How a final score's split is called: test, or validation (data without a test split)."""
    return "test" if split == "test" else "validation"


def format_metric(name: str | None, value: float, sign: bool = True) -> str:
    """Accuracy as a percentage (``sign``: with the % sign), any other metric as a number."""
    if name == "accuracy":
        return f"{100 * value:.2f}{'%' if sign else ''}"
    return f"{value:.4g}"
