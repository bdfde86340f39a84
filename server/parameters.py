"""A model config's ``parameters`` strings, read in one place with one spelling of every value kind.

Triton's config keeps backend options as strings (``parameters { key: "k" value: {
string_value: "v" } }``). Every tensorgate key is read through ``Parameters``, so
"true" means the same in the batcher, the engine options, drift and the tokenizer:
``true``/``false``, ``1``/``0``, ``yes``/``no`` and ``on``/``off``, any case, spaces
around ignored (Triton's own keys take "true"/"false"; the rest is what tensorgate
has accepted before). Anything else is a ``ParameterError`` naming the key and the
value, which fails the model's load instead of quietly meaning false.
"""

from __future__ import annotations

from collections.abc import Mapping

from tensorgate.clients.pb import model_config_pb2 as mc

from .errors import LoadError

__all__ = ["FALSE_WORDS", "TRUE_WORDS", "ParameterError", "Parameters", "parse_bool"]

TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")
_SHOWN = 64  # a value quoted in a message is cut here (the message goes to logs and RepositoryIndex)


class ParameterError(LoadError):
    """A parameter's value cannot be used; the message names the key and the value."""


def quoted(raw: str) -> str:
    """A config value as a message shows it: cut short and with control characters escaped."""
    cut = raw if len(raw) <= _SHOWN else raw[:_SHOWN] + "..."
    return repr(cut)[1:-1]


def parse_bool(raw: str, key: str) -> bool:
    """One spelling of a boolean for every parameter.

    Raises:
        ParameterError: a word outside TRUE_WORDS and FALSE_WORDS.
    """
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ParameterError(f"parameter {key} must be true or false (or 1/0, yes/no, on/off), got '{quoted(raw)}'")


class Parameters:
    """Typed reads of a string map (a config's ``parameters`` or an accelerator's); blank = not set."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = values

    @classmethod
    def of(cls, config: mc.ModelConfig) -> Parameters:
        return cls({key: value.string_value for key, value in config.parameters.items()})

    def __contains__(self, key: str) -> bool:
        return key in self._values

    def keys(self) -> list[str]:
        return sorted(self._values)

    def string(self, key: str) -> str | None:
        """The stripped value; None when the key is absent."""
        raw = self._values.get(key)
        return None if raw is None else raw.strip()

    def text(self, key: str, default: str = "") -> str:
        return self.string(key) or default

    def boolean(self, key: str, default: bool) -> bool:
        raw = self.string(key)
        return default if not raw else parse_bool(raw, key)

    def integer(self, key: str, default: int, minimum: int | None = None) -> int:
        raw = self.string(key)
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ParameterError(f"parameter {key} must be an integer, got '{quoted(raw)}'") from None
        if minimum is not None and value < minimum:
            raise ParameterError(f"parameter {key} must be at least {minimum}, got '{quoted(raw)}'")
        return value

    def number(self, key: str) -> float | None:
        raw = self.string(key)
        if not raw:
            return None
        try:
            return float(raw)
        except ValueError:
            raise ParameterError(f"parameter {key} must be a number, got '{quoted(raw)}'") from None

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        """One of ``choices`` (case-insensitive; returned as spelled in ``choices``)."""
        raw = self.string(key)
        if not raw:
            return default
        for choice in choices:
            if raw.lower() == choice.lower():
                return choice
        raise ParameterError(f"parameter {key} must be one of {', '.join(choices)}, got '{quoted(raw)}'")

    def names(self, key: str) -> tuple[str, ...]:
        """A comma-separated list."""
        return tuple(p.strip() for p in (self.string(key) or "").split(",") if p.strip())
