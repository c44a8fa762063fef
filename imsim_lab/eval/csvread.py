"""The validating CSV reader behind :func:`~imsim_lab.eval.formats.read_predictions` and
:func:`~imsim_lab.eval.formats.read_ground_truth`: numpy only, no CSV engine.

A table is read as bytes. The common case (ids like ``Q00012``, plain numbers, commas and ``\\n``,
no blank line, no quote or space) is parsed with vectorised numpy on the byte buffer: field bounds
from the comma and newline positions, ids turned into integer keys from their digits, scores from
fixed-width byte strings, Python strings built only once per distinct id. Anything else (quotes,
spaces, ``\\r\\n``, blank lines, non-ASCII text, ids longer than 17 digits, NaN, any malformed
field) goes through the :mod:`csv` module, which applies every check and names the first problem,
so both paths accept the same files and produce the same values.

Every problem is a :class:`~imsim_lab.errors.FormatError` naming the file and the 1-based file row;
quoted input is cut to :data:`QUOTE_LIMIT` characters.
"""

from __future__ import annotations

import csv
import os
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

_MAX_KEY_DIGITS = 17  # value * 32 + digits stays below 2**63
_MAX_SCORE_BYTES = 64
_SCORE_BYTES = b"0123456789+-.eE"  # what the fast path parses in a score
_MAX_PLAIN_CODE = 2**40  # below this an id's integer key serves as its code (products stay in int64)
_PAD = 80  # zeros after the body: a field of up to this many bytes can be read as one row


class _Fallback(Exception):
    """The fast path cannot decide: use the csv-module path."""


def quote(text: str, limit: int = QUOTE_LIMIT) -> str:
    """``repr(text)``, cut to about ``limit`` characters with an ellipsis."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text):,} characters)"


@dataclass(frozen=True, eq=False)
class IdColumn:
    """A validated id column: ``values`` (n,) str; ``codes`` (n,) non-negative int64, equal for
    equal ids and only for them; ``vocab`` (u,) with ``vocab[codes] == values`` and codes in
    [0, u), or None (then the codes need not be dense). A table's first column has a vocab."""

    values: np.ndarray
    codes: np.ndarray
    vocab: np.ndarray | None


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


def _read_padded(path: Path) -> tuple[bytearray, int]:
    """The file's bytes followed by :data:`_PAD` spare bytes (one buffer, no copy); and its size."""
    if not path.exists():
        raise FormatError(path, "file not found")
    if path.is_dir():
        raise FormatError(path, "is a folder, expected a CSV file")
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        data = bytearray(size + _PAD)
        got = f.readinto(memoryview(data)[:size])
    if got != size:  # the file changed while being read
        raise FormatError(path, f"read {got} bytes of {size}")
    return data, size


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
    data, size = _read_padded(path)
    begin = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    end = data.find(b"\n", begin, size)
    end = size if end < 0 else end
    _check_header(path, bytes(data[begin:end]), header)
    ncols = len(header)
    if end + 1 < size:  # the fast path checks every field and hands anything unusual to the csv path
        body_end = size
        if data[size - 1] != 10:  # no final newline: add one in the spare bytes
            data[size] = 10
            body_end += 1
        try:
            buf = np.frombuffer(data, np.uint8)[end + 1:]  # the body and the spare bytes, a view
            return _fast(path, buf, body_end - end - 1, ncols, id_kinds, allow_empty, score_column, max_rows)
        except _Fallback:
            pass
    body = bytes(data[end + 1:size])
    return _general(path, body, ncols, id_kinds, allow_empty, score_column, max_rows)


# --------------------------------------------------------------------------------------------
# fast path: numpy on the byte buffer


def _fast(path, buf, n_bytes, ncols, id_kinds, allow_empty, score_column, max_rows) -> Table:
    """The vectorised path over ``buf`` (uint8: the body, ending with a newline, in its first
    ``n_bytes``, then at least :data:`_PAD` spare bytes). It never reports a problem itself:
    anything unexpected (a blank line, a field count, an id or a score it cannot take) sends the
    file to :func:`_general`, which names the first problem exactly."""
    seps = np.flatnonzero(buf[:n_bytes] <= 44)  # newlines and commas (and any odd byte below them)
    kind = buf[seps]
    nl, cm = seps[kind == 10], seps[kind == 44]
    n, k = len(nl), ncols - 1
    line_start = np.concatenate([[0], nl[:-1] + 1])
    if len(cm) != n * k or not k:
        raise _Fallback
    cuts = cm.reshape(n, k)
    if not ((cuts[:, 0] > line_start).all() and (cuts[:, -1] < nl).all()):  # k commas in every line
        raise _Fallback
    if max_rows is not None and n > max_rows:
        raise FormatError(path, f"{n} predictions, more than the limit of {max_rows}", f"row {max_rows + 2}")
    # field j of every line spans [starts[j], ends[j]) (contiguous arrays, one per column)
    ends = [np.ascontiguousarray(cuts[:, j]) for j in range(k)] + [nl]
    starts = [line_start] + [e + 1 for e in ends[:-1]]
    ids = [_fast_ids(buf, starts[j], ends[j], kind, empty_ok, j == 0)
           for j, (kind, empty_ok) in enumerate(zip(id_kinds, allow_empty))]
    scores = _fast_scores(buf, starts[-1], ends[-1]) if score_column else None
    return Table(ids, scores, n)


def factorize_keys(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense codes of integer keys, in key order.

    Args:
        key: (n,) int64.

    Returns:
        (codes, where): codes (n,) int64 in [0, u), equal for equal keys and ordered like the keys;
        where (u,) the position of one occurrence of each distinct key.
    """
    new = np.ones(len(key), bool)
    if (key[1:] >= key[:-1]).all():  # already grouped in order (a file sorted by query): no sort
        new[1:] = key[1:] != key[:-1]
        return np.cumsum(new) - 1, np.flatnonzero(new)
    order = np.argsort(key)
    sk = key[order]
    new[1:] = sk[1:] != sk[:-1]
    codes = np.empty(len(key), np.int64)
    codes[order] = np.cumsum(new) - 1
    return codes, order[new]


def _records(buf: np.ndarray, width: int) -> np.ndarray:
    """Every ``width``-byte window of ``buf`` as one fixed-width bytes array (a view, no copy):
    ``_records(buf, w)[starts]`` copies the fields at ``starts`` in one fancy index."""
    return np.ndarray((len(buf) - width + 1,), dtype=f"S{width}", buffer=buf, strides=(1,))


def _by_length(labels: np.ndarray):
    """(label, rows) for each distinct small non-negative label (a field width, a number layout),
    in increasing label order; one group without an index when all labels are equal."""
    lo, hi = int(labels.min()), int(labels.max())
    if lo == hi:
        yield lo, slice(None)
        return
    counts = np.bincount(labels)
    order = np.argsort(labels.astype(np.int16 if hi < 2**15 else np.int64), kind="stable")  # radix sort
    bounds = np.concatenate([[0], np.cumsum(counts)])
    for label in np.flatnonzero(counts).tolist():
        yield label, order[bounds[label]:bounds[label + 1]]


def _fast_ids(buf, starts, ends, kind, allow_empty, with_vocab) -> IdColumn:
    prefix, min_digits = ID_KINDS[kind]
    lengths = ends - starts
    key = np.empty(len(starts), np.int64)
    for w, rows in _by_length(lengths):
        if w == 0 and allow_empty:
            key[rows] = -1
            continue
        if not min_digits < w <= _MAX_KEY_DIGITS + 1:
            raise _Fallback
        raw = _records(buf, w)[starts[rows]].view(np.uint8).reshape(-1, w)
        digits = raw[:, 1:] - np.uint8(48)  # uint8: anything but a digit becomes > 9
        if (raw[:, 0] != ord(prefix)).any() or (digits > 9).any():
            raise _Fallback
        if w <= 16:  # at most 15 digits: the digit sum is exact in float64, one matrix-vector product
            value = (digits @ 10.0 ** np.arange(w - 2, -1, -1)).astype(np.int64)
        else:
            value = np.zeros(len(raw), np.int64)
            for j in range(w - 1):
                value = value * 10 + digits[:, j]
        key[rows] = value * 32 + (w - 1)  # ids of other widths (Q00001, Q000001) stay apart
    sep = chr(buf[ends[0]])
    if not with_vocab and int(key.max()) < _MAX_PLAIN_CODE:
        # the key itself (shifted so that the empty id is 0) is a code: no sort, one string per row
        return IdColumn(_strings(buf, starts, lengths, sep), key + 1, None)
    codes, first = factorize_keys(key)
    vocab = _strings(buf, starts[first], lengths[first], sep)  # one Python string per distinct id
    return IdColumn(vocab[codes], codes, vocab)


def _strings(buf, starts, lengths, sep: str) -> np.ndarray:
    """(m,) object array of the ASCII fields at ``starts``: each field is copied with the
    separator that follows it, and the text is split on that separator."""
    out = np.empty(len(starts), dtype=object)
    for w, rows in _by_length(lengths):
        text = _records(buf, w + 1)[starts[rows]].tobytes().decode("ascii")
        out[rows] = text.split(sep)[:-1]
    return out


def _fast_scores(buf, starts, ends) -> np.ndarray:
    lengths = ends - starts
    out = np.empty(len(starts), np.float64)
    for w, rows in _by_length(lengths):
        if not 0 < w <= _MAX_SCORE_BYTES:
            raise _Fallback
        raw = _records(buf, w)[starts[rows]]
        if raw.tobytes().translate(None, _SCORE_BYTES):  # a space, a quote, "_", nan, inf...: the csv path
            raise _Fallback
        try:  # exact-width byte strings: numpy parses them like float() (correctly rounded)
            out[rows] = raw.astype(np.float64)
        except ValueError:
            raise _Fallback from None
    if not np.isfinite(out).all():
        raise _Fallback
    return out


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
