"""Settings from the environment, checked as they are read."""
import os
import re


class SettingsError(Exception):
    """A setting has a value the command cannot use (exit status 2)."""


_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}


def parse_seconds(text):
    """"90", "90s", "30m", "1h" -> whole seconds; None when malformed."""
    m = re.fullmatch(r"(\d+)([smh]?)", text.strip())
    return int(m.group(1)) * _UNITS[m.group(2)] if m else None


def parse_millis(text):
    """"50", "50ms", "2s" -> whole milliseconds; None when malformed."""
    m = re.fullmatch(r"(\d+)(ms|s)?", text.strip())
    if not m:
        return None
    return int(m.group(1)) * (1000 if m.group(2) == "s" else 1)


class Env:
    def __init__(self, environ=None):
        self.environ = os.environ if environ is None else environ

    def _raw(self, name, default):
        value = self.environ.get(name, "")
        return str(default) if value == "" else value

    def text(self, name, default):
        return self._raw(name, default)

    def flag(self, name):
        return self._raw(name, "0") == "1"

    def _duration(self, name, default, minimum, parse, unit, examples):
        raw = self._raw(name, default)
        v = parse(raw)
        if v is None:
            raise SettingsError(f"{name}: want a duration such as {examples}, got \"{raw}\"")
        if v < minimum:
            raise SettingsError(f"{name}: at least {minimum}{unit}, got \"{raw}\"")
        return v

    def seconds(self, name, default, minimum=1):
        """A duration such as 90, 90s, 30m or 1h, in whole seconds."""
        return self._duration(name, default, minimum, parse_seconds, "s", "90s, 30m or 1h")

    def millis(self, name, default, minimum=1):
        """A short duration such as 50ms or 2s, in whole milliseconds."""
        return self._duration(name, default, minimum, parse_millis, "ms", "50ms or 2s")

    def whole(self, name, default, minimum=0, maximum=None):
        raw = self._raw(name, default)
        if not raw.isdigit():
            raise SettingsError(f"{name}: want a whole number, got \"{raw}\"")
        v = int(raw)
        if v < minimum or (maximum is not None and v > maximum):
            bound = f"{minimum}..{maximum}" if maximum is not None else f"at least {minimum}"
            raise SettingsError(f"{name}: want {bound}, got {v}")
        return v

    def number(self, name, default, minimum=0.0):
        raw = self._raw(name, default)
        try:
            v = float(raw)
        except ValueError:
            raise SettingsError(f"{name}: want a number, got \"{raw}\"") from None
        if v < minimum:
            raise SettingsError(f"{name}: at least {minimum:g}, got {raw}")
        return v

    def whole_list(self, name, default, minimum=1, maximum=1000):
        """Whole numbers separated by spaces or commas."""
        raw = self._raw(name, default)
        items = raw.replace(",", " ").split()
        if not items:
            raise SettingsError(f"{name} is empty")
        out = []
        for item in items:
            if not item.isdigit() or not minimum <= int(item) <= maximum:
                raise SettingsError(f"{name}: bad value \"{item}\" (want {minimum}..{maximum})")
            out.append(int(item))
        return out
