"""The ``dvc exp run -S`` lines vitpipe's messages print, in Hydra's override grammar (what ``-S`` parses)
and quoted for the shell, so each works as printed; None where a value cannot be written so (the
message then names the params.yaml line instead). tests/check/test_classmap.py and
tests/test_hints.py run them through DVC.
"""

from __future__ import annotations

import re
import shlex

SCALAR = re.compile(r"(?i)null|~|true|false|yes|no|on|off|[-+]?(inf|nan)|[-+]?[\d_.]*\d[\d_.]*(e[-+]?\d+)?")
_PLAIN_VALUE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*( [A-Za-z0-9_-]+)*")
_PLAIN_PATH = re.compile(r"[A-Za-z0-9_/.:@%+-]+")
# DVC writes params.yaml as YAML 1.2, where these are strings, and PyYAML reads them back as YAML 1.1 booleans.
_YAML11_BOOL = re.compile(r"(?i)yes|no|on|off")


def hydra_value(name: str) -> str | None:
    """``name`` as a string value of a Hydra override, quoted where needed, or None if it cannot be one."""
    if _YAML11_BOOL.fullmatch(name) or set(name) & set('"\\$') or not name.isprintable():  # not a newline, tab...
        return None
    return name if _PLAIN_VALUE.fullmatch(name) and not SCALAR.fullmatch(name) else f'"{name}"'


def hydra_path(path: str) -> str | None:
    """A path (or any string) as a Hydra value: bare when Hydra reads it back unchanged, else quoted."""
    if _PLAIN_PATH.fullmatch(path) and not SCALAR.fullmatch(path):
        return path
    return hydra_value(path)


def set_strings_line(**values: str) -> str | None:
    """``dvc exp run -S 'key=value' ...`` setting string params (dotted keys given with ``__``:
    ``data__source``); None when a value cannot be written in Hydra's grammar."""
    args = []
    for key, value in values.items():
        written = hydra_path(value)
        if written is None:
            return None
        args += ["-S", shlex.quote(f"{key.replace('__', '.')}={written}")]
    return " ".join(["dvc", "exp", "run", *args])
