"""Character-level language modelling data from any UTF-8 text file."""

from __future__ import annotations

import codecs
import hashlib
import logging
import stat
from pathlib import Path

import torch
from torch import Tensor

from esper.data.dataset import Dataset, DatasetFormatError, DatasetNotFoundError
from esper.leyline.config import check_int
from esper.leyline.files import file_mode, not_regular

logger = logging.getLogger(__name__)

# The n characters are cut into three contiguous parts at n * TRAIN_END // SPLIT_DENOMINATOR
# (80%) and n * VAL_END // SPLIT_DENOMINATOR (90%): training, then validation, then test, so no
# split's text overlaps another's.
TRAIN_END = 8
VAL_END = 9
SPLIT_DENOMINATOR = 10


def _pydoc_text() -> str:
    """Python's bundled help-topic text: always present, a few hundred thousand characters."""
    from pydoc_data.topics import topics

    return "\n".join(topics[key] for key in sorted(topics))


def _windows(tokens: Tensor, block_size: int) -> tuple[Tensor, Tensor]:
    """Cut ``tokens`` into non-overlapping windows of ``block_size + 1``; return (x, y).

    ``x`` is each window without its last token, ``y`` without its first: ``y[i, t]`` is the
    token that follows ``x[i, t]``. Both are ``(num_windows, block_size)``.
    """
    span = block_size + 1
    n = tokens.shape[0] // span
    w = tokens[: n * span].reshape(n, span)
    return w[:, :-1].clone(), w[:, 1:].clone()


def _split_points(n: int) -> tuple[int, int]:
    """Where training ends and where validation ends in a text of ``n`` characters."""
    return n * TRAIN_END // SPLIT_DENOMINATOR, n * VAL_END // SPLIT_DENOMINATOR


def min_text_length(block_size: int) -> int:
    """Fewest characters that give at least one window in each of train, validation and test.

    Each split needs ``b = block_size + 1`` characters. With ``n = 10 q + r`` (``0 <= r < 10``)
    validation gets ``q + floor(0.9 r) - floor(0.8 r)`` characters: ``q`` for ``r <= 5``,
    ``q + 1`` for ``r >= 6``. Test gets ``ceil(n / 10)``, never fewer. So the least ``n`` is
    ``10 (b - 1) + 6``, from which on every split has at least ``b`` (training
    ``8 (b - 1) + 4 >= b``).
    """
    return SPLIT_DENOMINATOR * block_size + 6


def _read_text(path: str | Path | None) -> tuple[str, str]:
    """Return the text of ``path`` (or the bundled pydoc text) and a name for its source."""
    if path is None:
        return _pydoc_text(), "pydoc_data"
    file = Path(path).expanduser()
    mode = file_mode(file)
    if mode is None or not stat.S_ISREG(mode):
        what = "does not exist" if mode is None else f"is {not_regular(mode)}, not a file"
        raise DatasetNotFoundError(
            f"text file {file} {what}; pass the path of a UTF-8 text file, or none to use "
            "Python's bundled pydoc_data text"
        )
    raw = file.read_bytes()
    body = raw.removeprefix(codecs.BOM_UTF8)  # a leading BOM is no character of the text
    try:
        return body.decode("utf-8"), file.name
    except UnicodeDecodeError as exc:
        at = exc.start + len(raw) - len(body)
        raise DatasetFormatError(
            f"{file} is not UTF-8 text: invalid byte 0x{raw[at]:02x} at byte offset {at} "
            f"({exc.reason})"
        ) from exc


def _tokenize(text: str, source: str) -> tuple[Tensor, tuple[str, ...]]:
    """Return int64 token ids ``(len(text),)`` and the vocabulary (the sorted characters).

    Vectorized (corpora can be large): UTF-32 gives one int32 code point per character, and
    sorted code points are sorted characters, so a code point's position in the sorted unique
    set is its token id.
    """
    codepoints = torch.frombuffer(bytearray(text.encode("utf-32-le")), dtype=torch.int32)
    unique = torch.unique(codepoints)  # sorted
    if unique.numel() < 2:
        raise DatasetFormatError(
            f"text from {source} uses {unique.numel()} distinct character; a language model "
            "needs at least 2"
        )
    vocab = tuple(chr(c) for c in unique.tolist())
    return torch.searchsorted(unique, codepoints).to(torch.int64), vocab


def load_text(path: str | Path | None, block_size: int) -> Dataset:
    """Build a character-level language-modelling dataset from a UTF-8 text file.

    The vocabulary is the sorted set of characters in the text. The first 80% of the characters
    are training text, the next 10% validation and the last 10% test; each part is cut into
    non-overlapping windows of ``block_size + 1`` characters, ``x`` being the first
    ``block_size`` characters of a window and ``y`` the window shifted by one.

    Args:
        path: The text file; ``None`` uses Python's bundled ``pydoc_data`` help text.
        block_size: Context length ``T`` of each sample.

    Returns:
        A ``Dataset`` with ``x`` and ``y`` int64 ``(N, T)``, ``num_classes`` = vocabulary size
        and ``vocab`` the characters.

    Raises:
        DatasetNotFoundError: ``path`` does not exist or is not a file.
        DatasetFormatError: The file is not UTF-8, or too short for one window per split.
        ValueError: ``block_size`` is not an integer >= 1.
    """
    check_int("block_size", block_size)
    text, source = _read_text(path)
    needed = min_text_length(block_size)
    if len(text) < needed:
        raise DatasetFormatError(
            f"text from {source} has {len(text)} characters; block_size={block_size} needs at "
            f"least {needed} (one window of {block_size + 1} in each of the validation and "
            "test tenths)"
        )
    tokens, vocab = _tokenize(text, source)
    train_end, val_end = _split_points(len(text))
    x_train, y_train = _windows(tokens[:train_end], block_size)
    x_val, y_val = _windows(tokens[train_end:val_end], block_size)
    x_test, y_test = _windows(tokens[val_end:], block_size)
    logger.info(
        "text %s: %d chars, vocab %d, %d train / %d val / %d test windows",
        source,
        len(text),
        len(vocab),
        x_train.shape[0],
        x_val.shape[0],
        x_test.shape[0],
    )
    return Dataset(
        source=str(Path(path).expanduser().absolute()) if path else "Python's pydoc_data",
        name=f"text:{source}",
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        x_test=x_test,
        y_test=y_test,
        num_classes=len(vocab),
        input_shape=(block_size,),
        vocab=vocab,
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
    )
