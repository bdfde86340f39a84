"""Model names and override file names: what may reach a path on the server's disk.

A model name becomes a folder name (``<repository>/<name>``), and a load
request's ``file:<path>`` key becomes a file under a private temporary folder,
so both are checked before anything touches the disk: no separators or
traversal in a name, no absolute paths, ``..``, empty parts or control
characters in a file path.
"""

from __future__ import annotations

import unicodedata

from .errors import InvalidArgumentError

__all__ = ["MAX_NAME_CHARS", "check_model_name", "check_relative_path", "is_valid_model_name"]

MAX_NAME_CHARS = 255  # a folder name's limit on common file systems
_MAX_PATH_PARTS = 8


def _has_control(text: str) -> bool:
    return any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in text)


def _name_problem(name: str) -> str:
    if not name:
        return "is empty"
    if len(name) > MAX_NAME_CHARS:
        return f"is longer than {MAX_NAME_CHARS} characters"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    if name in (".", "..") or ".." in name:
        return "contains '..'"
    if name.startswith("."):
        return "starts with '.' (hidden folders are not models)"
    if _has_control(name):
        return "contains a control character"
    if name != name.strip():
        return "has leading or trailing spaces"
    return ""


def is_valid_model_name(name: str) -> bool:
    return not _name_problem(name)


def check_model_name(name: str) -> str:
    """Return the name, or raise InvalidArgumentError saying what is wrong (the name is shown escaped)."""
    problem = _name_problem(name)
    if problem:
        raise InvalidArgumentError(f"invalid model name {name[:80]!r}: it {problem}")
    return name


def check_relative_path(path: str, what: str = "file override") -> tuple[str, ...]:
    """Split a client-supplied relative path into safe parts, or raise InvalidArgumentError."""
    shown = repr(path[:120])
    if not path:
        raise InvalidArgumentError(f"{what}: empty path")
    if path.startswith(("/", "\\")) or (len(path) > 1 and path[1] == ":"):
        raise InvalidArgumentError(f"{what} {shown}: absolute paths are not allowed")
    if "\\" in path or _has_control(path):
        raise InvalidArgumentError(f"{what} {shown}: backslashes and control characters are not allowed")
    parts = tuple(path.split("/"))
    if len(parts) > _MAX_PATH_PARTS:
        raise InvalidArgumentError(f"{what} {shown}: more than {_MAX_PATH_PARTS} path parts")
    for part in parts:
        if part in ("", ".", ".."):
            raise InvalidArgumentError(f"{what} {shown}: empty, '.' and '..' path parts are not allowed")
        if len(part) > MAX_NAME_CHARS:
            raise InvalidArgumentError(f"{what} {shown}: a path part is longer than {MAX_NAME_CHARS} characters")
    return parts
