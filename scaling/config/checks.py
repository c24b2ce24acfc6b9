"""Config errors and the value checks the config dataclasses run in `__post_init__`."""

from typing import Any

from model.constants import FILTERS


class ConfigError(ValueError):
    """An invalid config entry: the dotted `key`, the `problem`, and the `file` if known."""

    def __init__(self, key: str, problem: str, file: str = ""):
        self.key, self.problem, self.file = key, problem, file
        super().__init__(f"{file}: {key}: {problem}" if file else f"{key}: {problem}")

    def __reduce__(self):
        """Copied and pickled whole (Ray sends a trial's errors between processes)."""
        return type(self), (self.key, self.problem, self.file)


def mismatch(expected: str, got: Any) -> str:
    return f"expected {expected}, got {got!r}"


def require(ok: bool, key: str, expected: str, got: Any) -> None:
    if not ok:
        raise ConfigError(key, mismatch(expected, got))


def positive_ints(obj, *names: str, minimum: int = 1) -> None:
    for name in names:
        value = getattr(obj, name)
        require(value >= minimum, name, f"an integer >= {minimum}", value)


def non_negative(obj, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        require(value >= 0, name, "a number >= 0", value)


def check_filter(key: str, name: str) -> None:
    require(name in FILTERS, key, f"one of {sorted(FILTERS)}", name)
