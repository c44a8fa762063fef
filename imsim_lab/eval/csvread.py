"""The validating CSV reader behind :func:`~imsim_lab.eval.formats.read_predictions` and
:func:`~imsim_lab.eval.formats.read_ground_truth`: numpy only, no CSV engine.

A table is read as bytes. The common case (plain ASCII letters, digits, ``+-.``, commas and ``\\n``,
no blank line) is parsed with vectorised numpy on the byte buffer: field bounds from the comma and
newline positions, ids turned into integer keys digit by digit, scores cast from fixed-width byte
strings, Python strings built only once per distinct id. Anything else (quotes, spaces, ``\\r\\n``,
blank lines, non-ASCII text, ids longer than 17 digits) goes through the :mod:`csv` module with the
same checks and the same messages, so both paths accept the same files and produce the same values.

Every problem is a :class:`~imsim_lab.errors.FormatError` naming the file and the 1-based file row;
quoted input is cut to :data:`QUOTE_LIMIT` characters.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import FormatError

#: id kinds: (prefix letter, minimum number of digits); DISC21 style, more digits allowed
ID_KINDS = {"query": ("Q", 5), "reference": ("R", 6), "training": ("T", 6)}
#: Accepted id formats (ASCII digits only).
ID_PATTERNS = {k: re.compile(f"{p}[0-9]{{{d},}}") for k, (p, d) in ID_KINDS.items()}
EXAMPLE_ID = {"query": "Q00000", "reference": "R000000", "training": "T000000"}
#: magic numbers of compressed files, to say so instead of "wrong header"
COMPRESSED_MAGIC = ((b"\x1f\x8b", "gzip"), (b"PK\x03\x04", "zip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"))
#: longest quoted input in an error message
QUOTE_LIMIT = 60

_FAST_BYTES = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+-.,\n"
_MAX_KEY_DIGITS = 17  # value * 32 + digits stays below 2**63
_MAX_SCORE_BYTES = 64
_PAD = 80  # zeros after the body: a field of up to this many bytes can be read as one row


class _Fallback(Exception):
    """The fast path cannot decide: use the csv-module path."""


def quote(text: str, limit: int = QUOTE_LIMIT) -> str:
    """``repr(text)``, cut to about ``limit`` characters with an ellipsis."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text):,} characters)"


@dataclass(frozen=True, eq=False)
class IdColumn:
    """A validated id column: ``vocab[codes] == values``; shapes (n,), (n,), (u,)."""

    values: np.ndarray
    codes: np.ndarray
    vocab: np.ndarray | None

    def expand(self) -> "IdColumn":
        """Built from (vocabulary, codes): the values are ``vocab[codes]``."""
        return IdColumn(self.values[self.codes], self.codes, self.values)


@dataclass(frozen=True, eq=False)
class Table:
    """The parsed body of a CSV: ``ids`` (one :class:`IdColumn` per id column), ``scores`` (n,)
    float64 or None, ``n`` rows, and ``file_rows`` (n,) the 1-based file row of each data row
    (None when row i is file row i + 2, no blank line)."""

    ids: list
    scores: np.ndarray | None
    n: int
    file_rows: np.ndarray | None = None

    def row(self, i: int) -> int:
        """The file row of data row ``i``."""
        return i + 2 if self.file_rows is None else int(self.file_rows[i])


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise FormatError(path, "file not found")
    if path.is_dir():
        raise FormatError(path, "is a folder, expected a CSV file")
    with open(path, "rb") as f:
        return f.read()


def _check_header(path: Path, first: bytes, expected: tuple[str, ...]) -> None:
    for magic, kind in COMPRESSED_MAGIC:
        if first.startswith(magic):
            raise FormatError(path, f"{kind}-compressed file; decompress it first (expected a CSV with the header "
                                    f"{','.join(expected)})", "row 1")
    if b"\0" in first:
        raise FormatError(path, f"binary data, not CSV text (starts {quote(first[:16].decode('latin-1'))}); expected "
                                f"the header {','.join(expected)}", "row 1")
    text = first.decode("utf-8", errors="replace").rstrip("\r\n")
    if not text.strip():
        raise FormatError(path, f"empty file; expected the header {','.join(expected)}", "row 1")
    try:
        header = tuple(h.strip() for h in next(csv.reader([text])))
    except csv.Error:
        header = (text,)
    if header != expected:
        raise FormatError(path, f"wrong header {quote(','.join(header))}; expected {','.join(expected)!r}", "row 1")


def read_table(path: str | Path, header: tuple[str, ...], id_kinds: tuple, allow_empty: tuple,
               score_column: bool, max_rows: int | None = None) -> Table:
    """Read and validate a CSV whose columns are ids (``id_kinds``) then, optionally, a score.

    Args:
        path: the CSV file.
        header: the expected header (whitespace around names ignored; a UTF-8 BOM is skipped).
        id_kinds: the kind of each id column (keys of :data:`ID_KINDS`).
        allow_empty: per id column, whether an empty field is accepted (it becomes ``""``).
        score_column: whether a last column of finite floats follows.
        max_rows: refuse more data rows than this.

    Returns:
        :class:`Table`.

    Raises:
        FormatError: the first problem, with the file row.
    """
    path = Path(path)
    data = _read_bytes(path)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    end = data.find(b"\n")
    first, body = (data, b"") if end < 0 else (data[:end], data[end + 1:])
    _check_header(path, first, header)
    ncols = len(header)
    if body and not body.translate(None, _FAST_BYTES) and b"\n\n" not in body and not body.startswith(b"\n"):
        try:
            return _fast(path, body, ncols, id_kinds, allow_empty, score_column, max_rows)
        except _Fallback:
            pass
    return _general(path, body, ncols, id_kinds, allow_empty, score_column, max_rows)


# --------------------------------------------------------------------------------------------
# fast path: numpy on the byte buffer


def _fast(path, body, ncols, id_kinds, allow_empty, score_column, max_rows) -> Table:
    if not body.endswith(b"\n"):
        body += b"\n"
    buf = np.frombuffer(body + bytes(_PAD), np.uint8)
    nl = np.flatnonzero(buf == 10)
    n = len(nl)
    if max_rows is not None and n > max_rows:
        raise FormatError(path, f"{n} predictions, more than the limit of {max_rows}", f"row {max_rows + 2}")
    cm = np.flatnonzero(buf == 44)
    line_start = np.concatenate([[0], nl[:-1] + 1])
    k = ncols - 1
    if len(cm) != n * k or (k and not _commas_in_lines(cm, line_start, nl, k)):
        per_line = np.bincount(np.searchsorted(nl, cm), minlength=n)
        i = int(np.flatnonzero(per_line != k)[0])
        raise FormatError(path, f"expected {ncols} fields per row, found {per_line[i] + 1}", f"row {i + 2}")
    cuts = cm.reshape(n, k) if k else np.zeros((n, 0), np.int64)
    starts = np.column_stack([line_start, cuts + 1])
    ends = np.column_stack([cuts, nl])
    ids = [_fast_ids(path, buf, starts[:, j], ends[:, j], kind, header_empty)
           for j, (kind, header_empty) in enumerate(zip(id_kinds, allow_empty))]
    scores = _fast_scores(path, buf, starts[:, -1], ends[:, -1]) if score_column else None
    return Table(ids, scores, n)


def _commas_in_lines(cm, line_start, nl, k) -> bool:
    c = cm.reshape(-1, k)
    return bool((c[:, 0] >= line_start).all() and (c[:, -1] < nl).all())


def _gather(buf, starts, width, lengths=None):
    """(n, width) uint8: the bytes from each start (rows copied from a window view of the
    buffer, which ends with :data:`_PAD` zeros); with ``lengths``, zero from each row's length on."""
    w = max(width, 1)
    records = np.ndarray((len(buf) - w + 1,), dtype=f"S{w}", buffer=buf, strides=(1,))  # overlapping
    out = records[starts].view(np.uint8).reshape(len(starts), w)[:, :width]
    if lengths is not None:
        out *= np.arange(width, dtype=np.int64) < lengths[:, None]
    return out


def factorize_keys(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense codes of integer keys, in key order.

    Args:
        key: (n,) int64.

    Returns:
        (codes, where): codes (n,) int64 in [0, u), equal for equal keys and ordered like the keys;
        where (u,) the position of one occurrence of each distinct key.
    """
    order = np.argsort(key)
    sk = key[order]
    new = np.ones(len(key), bool)
    new[1:] = sk[1:] != sk[:-1]
    codes = np.empty(len(key), np.int64)
    codes[order] = np.cumsum(new) - 1
    return codes, order[new]


def _field(buf, start, end) -> str:
    return bytes(buf[start:end]).decode("ascii")


def _fast_ids(path, buf, starts, ends, kind, allow_empty) -> IdColumn:
    prefix, min_digits = ID_KINDS[kind]
    length = ends - starts
    nd = np.maximum(length - 1, 0)
    width = int(nd.max(initial=0))
    if width > _MAX_KEY_DIGITS:
        raise _Fallback
    empty = length == 0
    ok = (buf[starts] == ord(prefix)) & (nd >= min_digits)
    digits = _gather(buf, starts + 1, width)
    digits -= 48  # uint8: anything but a digit becomes > 9
    fixed = bool((nd == width).all())
    if not fixed:
        digits *= np.arange(width) < nd[:, None]  # zero past each id's digits
    ok &= (digits <= 9).all(axis=1)
    if allow_empty:
        ok |= empty
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        raise _id_error(path, _field(buf, starts[i], ends[i]), kind, i + 2)
    if width <= 15:  # exact in float64: a matrix-vector product does the digit sum
        value = (digits @ 10.0 ** np.arange(width - 1, -1, -1)).astype(np.int64)
    else:
        value = np.zeros(len(starts), np.int64)
        for j in range(width):
            value = value * 10 + digits[:, j]
    if not fixed:  # the digits were read left-aligned in ``width`` places
        value //= 10 ** (width - nd)
    key = np.where(empty, -1, value * 32 + nd)
    codes, first = factorize_keys(key)
    return IdColumn(_strings(buf, starts[first], length[first]), codes, None).expand()


def _strings(buf, starts, lengths) -> np.ndarray:
    """(u,) object array of the ASCII fields at ``starts`` with ``lengths``."""
    w = int(lengths.max(initial=0)) + 1
    raw = _gather(buf, starts, w, lengths)
    raw[np.arange(len(starts)), lengths] = 10  # a newline ends each field; NUL pads
    text = raw.tobytes().decode("ascii")
    if not (lengths == w - 1).all():
        text = text.replace("\0", "")
    parts = text.split("\n")
    return np.fromiter(parts, dtype=object, count=len(starts))


def _fast_scores(path, buf, starts, ends) -> np.ndarray:
    length = ends - starts
    width = int(length.max(initial=0))
    if width > _MAX_SCORE_BYTES:
        raise _Fallback
    raw = _gather(buf, starts, max(width, 1), length)
    txt = raw.view(f"S{max(width, 1)}").ravel()
    try:
        s = txt.astype(np.float64)
    except ValueError:
        s = None
    if s is None or not np.isfinite(s).all():
        return _str_scores(path, [t.decode("ascii") for t in txt.tolist()], None)
    return s


# --------------------------------------------------------------------------------------------
# general path: the csv module


def _general(path, body, ncols, id_kinds, allow_empty, score_column, max_rows) -> Table:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        row = body.count(b"\n", 0, e.start) + 2
        raise FormatError(path, "not UTF-8 text", f"row {row}") from None
    cols: list[list[str]] = [[] for _ in range(ncols)]
    rows: list[int] = []
    reader = csv.reader(text.splitlines(keepends=True), strict=True)
    line = 2
    try:
        for rec in reader:
            row, line = line, reader.line_num + 2
            if not rec:
                continue
            if len(rec) != ncols:
                raise FormatError(path, f"expected {ncols} fields per row, found {len(rec)}", f"row {row}")
            if max_rows is not None and len(rows) >= max_rows:
                total = len(rows) + 1 + sum(1 for r in reader if r)
                raise FormatError(path, f"{total} predictions, more than the limit of {max_rows}", f"row {row}")
            rows.append(row)
            for c, v in zip(cols, rec):
                c.append(v)
    except csv.Error as e:
        raise FormatError(path, f"malformed CSV ({e})", f"row {line}") from None
    file_rows = np.asarray(rows, np.int64)
    ids = [_str_ids(path, c, kind, empty_ok, file_rows) for c, kind, empty_ok in zip(cols, id_kinds, allow_empty)]
    scores = _str_scores(path, cols[-1], file_rows) if score_column else None
    return Table(ids, scores, len(rows), file_rows)


def _str_ids(path, values: list[str], kind: str, allow_empty: bool, file_rows) -> IdColumn:
    index: dict[str, int] = {}
    codes = np.fromiter((index.setdefault(v.strip(), len(index)) for v in values), np.int64, len(values))
    vocab = np.array(list(index), dtype=object)
    pat = ID_PATTERNS[kind]
    bad = [j for j, u in enumerate(vocab) if not ((allow_empty and u == "") or pat.fullmatch(u))]
    if bad:
        i = int(np.flatnonzero(np.isin(codes, bad))[0])
        raise _id_error(path, vocab[codes[i]], kind, int(file_rows[i]))
    return IdColumn(vocab[codes] if len(codes) else np.array([], object), codes, vocab)


def _id_error(path, text: str, kind: str, row: int) -> FormatError:
    column = "query_id" if kind == "query" else "reference_id"
    if text.strip() == "":
        return FormatError(path, f"empty {column}", f"row {row}")
    return FormatError(path, f"unknown {kind} id format {quote(text.strip())} (expected like {EXAMPLE_ID[kind]})",
                       f"row {row}")


def _str_scores(path, values: list[str], file_rows) -> np.ndarray:
    out = np.empty(len(values), np.float64)
    for i, v in enumerate(values):
        t = v.strip()
        try:
            x = float(t) if t.isascii() and "_" not in t else float("x")
        except ValueError:
            x = None
        if x is None or x != x or x in (float("inf"), float("-inf")):
            if t == "":
                what = "empty"
            elif t.lower().lstrip("+-") == "nan":
                what = "NaN"
            elif x is not None and x != x:
                what = "NaN"
            elif x is not None:
                what = "infinite"
            else:
                what = "non-numeric"
            row = i + 2 if file_rows is None else int(file_rows[i])
            raise FormatError(path, f"{what} score {quote(t)}", f"row {row}")
        out[i] = x
    return out
