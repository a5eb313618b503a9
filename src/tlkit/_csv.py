"""Reading a CSV of labelled images: one label per image, or several (multi-label)."""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

PATH_COLUMNS = ("path", "file", "filename", "image")
LABEL_COLUMNS = ("label", "class", "target")
TAG_COLUMNS = ("labels", "tags")
SEPARATORS = ("|", ";", ",", " ")


@dataclass
class LabelTable:
    """What a CSV lists: files, their label names (one each, or a tuple of several), the class
    names in index order, and the rows left out as repeats."""

    files: list[Path]
    labels: list[str] | list[tuple[str, ...]]
    classes: list[str]
    multi_label: bool
    repeated: list[tuple[str, str]] = field(default_factory=list)

    def targets(self) -> list[int] | list[list[int]]:
        """Class indices, or multi-hot rows for several labels per image."""
        index = {name: i for i, name in enumerate(self.classes)}
        if not self.multi_label:
            return [index[str(label)] for label in self.labels]
        rows = []
        for labels in self.labels:
            row = [0] * len(self.classes)
            for name in labels:
                row[index[name]] = 1
            rows.append(row)
        return rows


def read_table(csv_path: Path, base: Path, label_sep: str | None) -> LabelTable:
    """The files and labels a CSV lists, in one of three layouts: ``path,label`` (one label
    each), ``path,labels`` or ``path,tags`` (several, separated by ``label_sep``, by default
    the first of ``|``, ``;``, ``,`` and a space found in the column), or a path column and one
    0/1 column per class. Relative paths are taken from ``base``."""
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{str(csv_path)!r} is not UTF-8 text ({exc.reason} at byte {exc.start}); save "
            "it as UTF-8"
        ) from exc
    with io.StringIO(text, newline="") as handle:
        reader = csv.reader(handle)
        header = [c.strip() for c in next(reader, [])]
        rows = [[v.strip() for v in row] for row in reader if any(v.strip() for v in row)]
    lower = [c.lower() for c in header]
    path_at = next((i for i, c in enumerate(lower) if c in PATH_COLUMNS), None)
    label_at = [i for i, c in enumerate(lower) if c in (*LABEL_COLUMNS, *TAG_COLUMNS)]
    others = [i for i in range(len(header)) if i != path_at]
    if len(set(lower)) < len(lower):
        raise ValueError(f"{str(csv_path)!r} names a column twice: {header}")
    one_column = len(label_at) == 1 and len(others) == 1
    if path_at is None or not (one_column or (not label_at and len(others) >= 2)):
        raise ValueError(_layouts(csv_path, lower))
    if not rows:
        raise ValueError(f"{str(csv_path)!r} lists no image")
    uneven = [n + 2 for n, row in enumerate(rows) if len(row) != len(header)]
    if uneven:
        raise ValueError(
            f"{str(csv_path)!r} has rows with another number of values than its "
            f"{len(header)} columns, on line(s) {_lines(uneven)}; quote values holding a comma"
        )
    tagged = one_column and (lower[label_at[0]] in TAG_COLUMNS or label_sep is not None)
    single = one_column and not tagged
    empty = [n + 2 for n, r in enumerate(rows) if not r[path_at] or (single and not r[label_at[0]])]
    if empty:
        raise ValueError(
            f"{str(csv_path)!r} has rows with no path{' or no label' if single else ''}, on "
            f"line(s) {_lines(empty)}; fill them in or remove them"
        )
    files = [
        Path(r[path_at]) if Path(r[path_at]).is_absolute() else base / r[path_at] for r in rows
    ]
    if one_column:
        column = [row[label_at[0]] for row in rows]
        if tagged:
            return _tagged(csv_path, files, column, label_sep)
        return _single(csv_path, files, column)
    values = [[r[i] for i in others] for r in rows]
    return _columns(csv_path, files, [header[i] for i in others], values)


def _single(csv_path: Path, files: list[Path], column: list[str]) -> LabelTable:
    kept, labels, repeated = _once_each(files, column, csv_path)
    names = sorted(set(labels), key=lambda v: (0, int(v), "") if _is_int(v) else (1, 0, v))
    return LabelTable(kept, labels, names, False, repeated)


def _tagged(
    csv_path: Path, files: list[Path], column: list[str], label_sep: str | None
) -> LabelTable:
    sep = label_sep or next((s for s in SEPARATORS if any(s in v for v in column)), "|")
    sets = [tuple(sorted({t.strip() for t in v.split(sep) if t.strip()})) for v in column]
    kept, labels, repeated = _once_each(files, sets, csv_path)
    found = {name for tags in labels for name in tags}
    if not found:
        raise ValueError(f"{str(csv_path)!r} gives no image a label")
    names = sorted(found, key=lambda v: (0, int(v), "") if _is_int(v) else (1, 0, v))
    return LabelTable(kept, labels, names, True, repeated)


def _columns(
    csv_path: Path, files: list[Path], names: list[str], values: list[list[str]]
) -> LabelTable:
    bad = [(n + 2, v) for n, row in enumerate(values) for v in row if v not in ("0", "1")]
    if bad:
        raise ValueError(
            f"{str(csv_path)!r} has one column per class ({', '.join(names[:5])}...), which "
            f"must hold 0 or 1; line {bad[0][0]} holds {bad[0][1]!r}"
        )
    sets = [tuple(name for name, v in zip(names, row, strict=True) if v == "1") for row in values]
    kept, labels, repeated = _once_each(files, sets, csv_path)
    unused = [name for name in names if not any(name in tags for tags in labels)]
    if unused:
        raise ValueError(
            f"class column(s) {', '.join(map(repr, unused[:10]))} of {str(csv_path)!r} hold no "
            "1: the model would have a class it never saw; remove them"
        )
    return LabelTable(kept, labels, list(names), True, repeated)


def _once_each(
    files: list[Path], labels: list, csv_path: Path
) -> tuple[list[Path], list, list[tuple[str, str]]]:
    """Each file once: a row repeated is kept once (a copy would land on both sides of a
    split), and a file under two labels (or label sets) is refused."""
    first: dict[str, int] = {}
    keep, repeated = [], []
    for n, file in enumerate(files):
        key = os.path.normpath(os.path.abspath(file))
        if key not in first:
            first[key] = n
            keep.append(n)
        elif labels[first[key]] != labels[n]:
            raise ValueError(
                f"{str(csv_path)!r} lists {str(file)!r} as {_shown(labels[first[key]])} on "
                f"line {first[key] + 2} and as {_shown(labels[n])} on line {n + 2}; an image "
                "has one label (or one set of labels)"
            )
        else:
            repeated.append((str(file), f"listed again on line {n + 2}: kept once"))
    return [files[n] for n in keep], [labels[n] for n in keep], repeated


def _shown(label: str | tuple[str, ...]) -> str:
    return repr(label) if isinstance(label, str) else repr("|".join(label))


def _layouts(csv_path: Path, columns: list[str]) -> str:
    return (
        f"{str(csv_path)!r} has columns {columns}; it needs a header with one path column "
        f"({'/'.join(PATH_COLUMNS)}) and either one label column ({'/'.join(LABEL_COLUMNS)}) "
        f"and nothing else, one column of several labels ({'/'.join(TAG_COLUMNS)}), or one 0/1 "
        "column per class"
    )


def _lines(numbers: list[int]) -> str:
    return ", ".join(map(str, numbers[:10]))


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()
