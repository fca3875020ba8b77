"""Class reconciliation from params: ``data.class_aliases`` and ``data.drop_classes``, and the fix a refusal names.

Published datasets name a class one way in train and another in valid/test, or lack a class in
one split. :func:`reconcile` maps folder names to class names (``{QUESTION MARK: POLYGONIA}``: the
``QUESTION MARK`` folder of any split holds class ``POLYGONIA``) and leaves dropped classes out of
every split, so ``download`` is not rerun and no file is renamed. vitpipe never picks an alias:
:func:`class_fix` writes the ``dvc exp run -S`` lines a user completes, suggesting only pairs whose
names differ in case, spaces, ``-`` or ``_``.
"""

from __future__ import annotations

import json
import re
import shlex
import string
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field

from vitpipe.data.index import SPLITS
from vitpipe.params import control_characters
from vitpipe.setparam import SCALAR, hydra_value

PLACEHOLDER = "TRAIN_CLASS"  # where the user writes the train class a folder holds


@dataclass
class Reconciled:
    """The tree's images by class name, after aliases and drops."""

    splits: dict[str, dict[str, list[str]]]  # split -> class -> image paths (the files' own folders)
    folders: dict[str, dict[str, list[str]]]  # split -> class -> folder names that hold it
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)  # class -> split -> images left out
    errors: list[str] = field(default_factory=list)  # aliases or drops that name nothing

    def shown(self, split: str, name: str) -> str:
        """``split/FOLDER``, with the class it holds when data.class_aliases renamed it."""
        folders = [shown_name(f) for f in self.folders[split][name]]
        if self.folders[split][name] == [name]:
            return f"{split}/{shown_name(name)}"
        return f"{split}/{' + '.join(folders)} (class {shown_name(name)})"


def shown_name(name: str) -> str:
    """``name`` as printed in a one-line message: as it is, or as an escaped JSON string when it holds a
    control character (a newline would split the line) or is not in Unicode's NFC form (a decomposed
    ``é`` looks exactly like the composed one)."""
    if control_characters(name) or unicodedata.normalize("NFC", name) != name:
        return json.dumps(name)
    return name


def normalisation_twin(name: str, others: list[str]) -> str | None:
    """The name in ``others`` that differs from ``name`` only in Unicode normalisation (NFC/NFD), if any."""
    nfc = unicodedata.normalize("NFC", name)
    return next((o for o in others if o != name and unicodedata.normalize("NFC", o) == nfc), None)


def reconcile(tree_splits: dict[str, dict[str, list[str]]], aliases: dict[str, str],
              drop: tuple[str, ...]) -> Reconciled:
    """Applies ``aliases`` (folder name -> class name, in every split), then leaves out ``drop``."""
    out = Reconciled(splits={}, folders={})
    for split, by_folder in tree_splits.items():
        classes: dict[str, list[str]] = defaultdict(list)
        folders: dict[str, list[str]] = defaultdict(list)
        for folder, paths in by_folder.items():
            name = aliases.get(folder, folder)
            if name in drop:
                out.dropped.setdefault(name, {})[split] = out.dropped.get(name, {}).get(split, 0) + len(paths)
                continue
            classes[name] += paths
            folders[name].append(folder)
        out.splits[split] = {name: sorted(paths) for name, paths in sorted(classes.items())}
        out.folders[split] = dict(sorted(folders.items()))
    seen = {folder for by_folder in tree_splits.values() for folder in by_folder}
    out.errors += [f"data.class_aliases: no folder named {shown_name(name)!r} in "
                   f"{', '.join(f'{s}/' for s in tree_splits)}; remove it from data.class_aliases (folder names "
                   f"match exactly){_removal(name)}." for name in aliases if name not in seen]
    named = {aliases.get(folder, folder) for folder in seen}
    kept = [name for name in drop if name in named]
    line = set_param_line("data.drop_classes", names=kept) if kept else "dvc exp run -S 'data.drop_classes=[]'"
    out.errors += [f"data.drop_classes: no class named {shown_name(name)!r} (after data.class_aliases); remove it "
                   f"from data.drop_classes{f': `{line}`' if line else ''}." for name in drop if name not in named]
    return out


def _removal(name: str) -> str:
    """``: `dvc exp run -S '~data.class_aliases.NAME'``` where Hydra's dotted key can name ``name``."""
    return f": `dvc exp run -S '~data.class_aliases.{name}'`" if re.fullmatch(r"[A-Za-z_][\w-]*", name) else ""


def _norm(name: str) -> str:
    return re.sub(r"[\s_-]+", "", unicodedata.normalize("NFC", name)).casefold()


_KEY_PLAIN = set(string.ascii_letters + string.digits + "_-/+.%*@?| ")
_KEY_ESCAPED = set("\\()[]{}:=,")


def _hydra_key(name: str) -> str | None:
    """``name`` as a dict key of a Hydra override (what ``dvc exp run -S`` parses), or None if it cannot be one."""
    if SCALAR.fullmatch(name) or not set(name) <= _KEY_PLAIN | _KEY_ESCAPED:
        return None
    text = "".join("\\" + c if c in _KEY_ESCAPED else c for c in name)
    head, tail = len(text) - len(text.lstrip(" ")), len(text) - len(text.rstrip(" "))
    return "\\ " * head + text.strip(" ") + "\\ " * tail  # unescaped edge spaces are dropped by the grammar


def set_param_line(key: str, mapping: dict[str, str] | None = None, names: list[str] | None = None) -> str | None:
    """The shell command ``dvc exp run -S '<key>=...'`` setting a mapping (added with ``++``: Hydra adds
    keys to a mapping only so) or a list of names; None when a name cannot be written in Hydra's grammar."""
    if mapping is not None:
        parts = [(_hydra_key(k), hydra_value(v)) for k, v in mapping.items()]
        if any(k is None or v is None for k, v in parts):
            return None
        arg = f"++{key}={{{', '.join(f'{k}: {v}' for k, v in parts)}}}"
    else:
        values = [hydra_value(n) for n in names or []]
        if any(v is None for v in values):
            return None
        arg = f"{key}=[{', '.join(values)}]"  # type: ignore[arg-type]
    return f"dvc exp run -S {shlex.quote(arg)}"


def _quoted(name: str) -> str:
    """A JSON string is a double-quoted YAML scalar; escaped where a character would hide (see :func:`shown_name`)."""
    return shown_name(name) if shown_name(name) != name else json.dumps(name, ensure_ascii=False)


def _yaml_flow(mapping: dict[str, str] | None = None, names: list[str] | None = None) -> str:
    """A YAML flow mapping or list with every name double-quoted."""
    if mapping is not None:
        return "{" + ", ".join(f"{_quoted(k)}: {_quoted(v)}" for k, v in mapping.items()) + "}"
    return "[" + ", ".join(_quoted(n) for n in names or []) + "]"


def _command(key: str, mapping: dict[str, str] | None = None, names: list[str] | None = None) -> str:
    line = set_param_line(key, mapping, names)
    if line is not None:
        return f"`{line}`"
    return f"set {key}: {_yaml_flow(mapping, names)} in params.yaml"


def class_fix(unknown: dict[str, list[str]], classes: list[str], missing: dict[str, list[str]], *,
              aliases: dict[str, str], drop: tuple[str, ...]) -> str:
    """The fix for class folders that train/ lacks, as commands a user can run.

    Args:
        unknown: folder name -> the splits where it holds a class that train/ lacks.
        classes: the train classes.
        missing: split -> train classes with no folder in it.
        aliases: ``data.class_aliases`` as set now (the drop line names the classes they map to).
        drop: ``data.drop_classes`` as set now (the drop line keeps them).
    """
    by_norm = defaultdict(list)
    for name in classes:
        by_norm[_norm(name)].append(name)
    pairs, similar, hints = {}, [], []
    for folder, splits in unknown.items():
        match = by_norm.get(_norm(folder), [])
        if len(match) == 1:
            pairs[folder] = match[0]
            similar.append(folder)
            continue
        pairs[folder] = PLACEHOLDER
        lacking = sorted(set.intersection(*(set(missing.get(s, [])) for s in splits)))
        where = " and ".join(f"{s}/" for s in splits)
        hints.append(f"train classes with no folder in {where}: {', '.join(lacking)}" if lacking
                     else f"every train class has a folder in {where}")
    text = "map each folder to the train class it holds"
    if similar:
        text += (f" ({', '.join(map(shown_name, similar))} differ from a train class only in case, spaces, -, _ or "
                 f"Unicode normalisation: check the pair)")
    text += f": {_command('data.class_aliases', mapping=pairs)}"
    if hints:
        text += f" (replace {PLACEHOLDER}; {'; '.join(dict.fromkeys(hints))})"
    names = sorted(set(drop) | {aliases.get(folder, folder) for folder in unknown})
    return text + f", or leave them out of every split: {_command('data.drop_classes', names=names)}"


def control_messages(rec: Reconciled) -> list[str]:
    """A class name with a control character (a folder's, or an alias's) would split predict's lines and the
    report's table rows: one refusal per name, at the first split holding it."""
    out, seen = [], set()
    for split, by_class in rec.splits.items():
        for name in sorted(set(by_class) - seen):
            if control_characters(name):
                seen.add(name)
                out.append(f"{rec.shown(split, name)}: the class name holds a control character "
                           f"({control_characters(name)}); predict prints one line per image and the report a "
                           f"table cell per class.")
    return out


def control_fix(rec: Reconciled) -> str:
    """The fix for those names: a rename, or an alias of each folder (a suggestion, to check)."""
    folders = sorted({f for by_class in rec.folders.values() for name, fs in by_class.items() for f in fs
                      if control_characters(name)})
    mapping = {f: re.sub(r"\s+", " ", re.sub("[\x00-\x1f\x7f-\x9f\u2028\u2029]", " ", f)).strip() or "CLASS"
               for f in folders}
    return f"rename the folder, or map it to a name without one: {_command('data.class_aliases', mapping=mapping)}"


def unknown_folders(splits: dict[str, dict[str, list[str]]], folders: dict[str, dict[str, list[str]]],
                    classes: list[str]) -> dict[str, list[str]]:
    """Folder name -> splits, for every folder whose class train/ lacks (in split order)."""
    out: dict[str, list[str]] = {}
    for split in SPLITS:
        for name in splits.get(split, {}):
            if name not in classes:
                for folder in folders[split][name]:
                    out.setdefault(folder, []).append(split)
    return dict(sorted(out.items()))
