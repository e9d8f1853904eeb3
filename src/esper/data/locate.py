"""Where a dataset's files live: the search order shared by the file-based loaders.

Order: an explicit ``data_dir``; ``$ESPER_DATA_DIR``; a system directory (Debian's
``/usr/share/datasets/...``, where one exists); the user cache ``$XDG_CACHE_HOME/esper/<name>``
(or ``~/.cache/esper/<name>``); finally a download into that cache directory.

An explicit ``data_dir`` is a request, not a hint: when it does not hold the dataset the search
does not silently continue elsewhere; it downloads into ``data_dir/<name>`` when downloads are
allowed and otherwise fails, naming what it looked for. A ``data_dir`` or ``$ESPER_DATA_DIR``
holding the dataset twice (in itself and in ``<name>/``), part of it outside the download's
folder (beside a whole copy too), or its ``.gz`` files uncompressed, is refused
(``_check_given``), as is a ``$ESPER_DATA_DIR`` that is no directory. A download that cannot
write its folder (read-only, full) is a ``DatasetNotFoundError`` naming the folder.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from esper.data.dataset import DatasetNotFoundError, DownloadError, DownloadPlaceError
from esper.leyline.files import expanded, file_mode

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "ESPER_DATA_DIR"


@dataclass(frozen=True)
class DatasetFiles:
    """What makes a directory hold one dataset.

    Attributes:
        name: Folder name of the dataset, e.g. ``"fashion-mnist"``; used for
            ``$ESPER_DATA_DIR/<name>``, ``<data_dir>/<name>`` and the cache folder.
        required: File names that must all be present in the directory.
        subdirs: Relative folders, tried in order, in which the files may sit below a candidate
            directory (``""`` is the candidate itself), e.g. ``("", "cifar-10-batches-py")``.
        system_dir: Directory where an OS package installs the dataset, or ``None``.
        install_hint: Extra advice for the not-found message, e.g. an ``apt-get`` command.
        download_dir: The folder below the download's own (one of ``subdirs``) where a
            download puts the files: part of the dataset there is a download's begun; anywhere
            else in a given data_dir it is the user's (``_check_given``).
    """

    name: str
    required: tuple[str, ...]
    subdirs: tuple[str, ...] = ("",)
    system_dir: Path | None = None
    install_hint: str | None = None
    download_dir: str = ""


def cache_dir(name: str) -> Path:
    """Return the user cache directory for dataset ``name`` (not created)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "esper" / name


def _search_bases(
    files: DatasetFiles, data_dir: str | Path | None
) -> tuple[list[Path], Path, bool]:
    """Where to look, in order; where a download goes; whether the directory was given.

    Raises:
        DatasetNotFoundError: the given ``data_dir`` is a file, or cannot be reached; a set
            ``$ESPER_DATA_DIR`` is no directory; either holds the dataset twice or in part.
    """
    if data_dir is not None:
        root = _expanded(files, "data_dir", data_dir)
        mode = _mode(files, root)
        if mode is not None and not stat.S_ISDIR(mode):
            raise DatasetNotFoundError(
                f"{files.name}: data_dir {str(root)!r} is a file; give the folder holding "
                f"{', '.join(files.required)} (or its parent)"
            )
        bases, target = [root / files.name, root], root / files.name
        _check_given(files, bases, target)
        return bases, target, True
    env = os.environ.get(DATA_DIR_ENV, "")
    bases = []
    if env:
        given = _expanded(files, f"${DATA_DIR_ENV}", env)
        bases = [given / files.name, given]
        mode = _mode(files, bases[1])
        if mode is None or not stat.S_ISDIR(mode):
            what = "does not exist" if mode is None else "is not a directory"
            raise DatasetNotFoundError(
                f"{files.name}: ${DATA_DIR_ENV} {str(bases[1])!r} {what}; point it at the "
                "folder holding the datasets, or unset it to search the standard places"
            )
        _check_given(files, bases, cache_dir(files.name))
    if files.system_dir is not None:
        bases.append(files.system_dir)
    target = cache_dir(files.name)
    return [*bases, target], target, False


def _expanded(files: DatasetFiles, what: str, path: str | Path) -> Path:
    """``path`` with ``~`` expanded.

    Raises:
        DatasetNotFoundError: ``~user`` names no user.
    """
    try:
        return expanded(path)
    except ValueError as err:
        raise DatasetNotFoundError(f"{files.name}: {what} {err}") from None


def find_dataset_dir(
    files: DatasetFiles,
    data_dir: str | Path | None,
    *,
    fetch: Callable[[Path], None] | None,
    unpack: Callable[[Path], bool] | None = None,
) -> Path:
    """Return the directory that holds every file of ``files.required``.

    Args:
        files: The dataset's name, required files and system directory.
        data_dir: Explicit directory (the dataset folder itself or a parent holding
            ``<name>/``); ``None`` to search the environment, system and cache directories.
        fetch: Downloads the dataset into the directory it is given (which it may create), or
            ``None`` when downloads are not allowed.
        unpack: Makes the dataset in the directory it is given from a file already on disk
            (an archive fetched by hand), without the network, whether downloads are allowed
            or not; returns whether there was one.

    Returns:
        The directory holding the required files.

    Raises:
        DatasetNotFoundError: ``data_dir`` is a file, or see ``_search_bases``; or no searched
            directory holds the files and the download was not allowed or failed (the
            ``DownloadError`` is then the cause); the message lists every place searched and
            what to do.
    """
    searched: list[Path] = []

    def first_complete(bases: Sequence[Path]) -> Path | None:
        for candidate in _candidates(files, bases):
            searched.append(candidate)
            if _complete(files, candidate):
                return candidate
        return None

    bases, target, explicit = _search_bases(files, data_dir)
    found = first_complete(bases)
    if found is None and unpack is not None and _unpacked(files, target, unpack):
        found = first_complete([target])
    if found is None and fetch is not None:
        logger.info("%s not found locally; downloading into %s", files.name, target)
        _fetch(files, target, fetch, searched, explicit)
        found = first_complete([target])
        if found is None:
            raise DatasetNotFoundError(
                f"{files.name}: the download into {target} finished but did not produce the "
                f"required files {', '.join(files.required)}"
            )
    if found is None:
        raise _not_found(files, searched, explicit=explicit, fetch_allowed=fetch is not None)
    logger.info("using %s from %s", files.name, found)
    return found


def _fetch(
    files: DatasetFiles,
    target: Path,
    fetch: Callable[[Path], None],
    searched: list[Path],
    explicit: bool,
) -> None:
    """``fetch(target)`` (``find_dataset_dir``'s), its failures said in one line.

    Raises:
        DatasetNotFoundError: the download failed (its ``DownloadError`` kept as the cause:
            one error type for "could not get the dataset"), or ``target`` cannot be written.
    """
    try:
        fetch(target)
    except DownloadError as exc:
        raise _not_found(
            files, searched, explicit=explicit, fetch_allowed=True, download_error=exc
        ) from exc
    except DatasetNotFoundError:
        raise
    except OSError as exc:  # writing the download's folder: read-only, full, ...
        raise _not_written(files, target, exc) from exc


def _unpacked(files: DatasetFiles, target: Path, unpack: Callable[[Path], bool]) -> bool:
    """``unpack(target)`` (``find_dataset_dir``'s), a folder it cannot write said in one line.

    Raises:
        DatasetNotFoundError: ``target`` cannot be written (read-only, full, ...).
    """
    try:
        return unpack(target)
    except OSError as exc:
        raise _not_written(files, target, exc) from exc


def _check_given(files: DatasetFiles, bases: Sequence[Path], target: Path) -> None:
    """A given ``data_dir`` is used as it is: the dataset found in two of its places, part of
    it outside the download's folder (``files.download_dir``; beside a whole copy too), or its
    files uncompressed, is refused rather than one place or a download chosen silently (three
    of the user's files with the fourth missing were replaced by a download, which then took
    precedence for good).

    Raises:
        DatasetNotFoundError: naming the places, or the files present and those missing.
    """
    candidates = _candidates(files, bases)
    present = {
        c: [f for f in files.required if _mode(files, c / f) is not None] for c in candidates
    }
    complete = [c for c in candidates if _complete(files, c)]
    twice = [c for c in complete[1:] if not os.path.samefile(complete[0], c)]
    if twice:
        raise DatasetNotFoundError(
            f"{files.name}: {str(bases[1])!r} holds the dataset twice, in {str(complete[0])!r} "
            f"and {str(twice[0])!r}; remove one, or point --data-dir (or $ESPER_DATA_DIR) at "
            "the one to use"
        )
    downloads = target / files.download_dir
    for candidate in candidates:
        if candidate in complete:
            continue
        if not complete:
            _check_compressed(files, candidate)  # the download's folder too: it went beside
        if candidate.is_relative_to(downloads):
            continue
        if present[candidate]:
            lacking = [f for f in files.required if not _is_file(files, candidate / f)]
            have = [f for f in present[candidate] if f not in lacking]
            held = f"part of the dataset ({', '.join(have)})" if have else "the dataset's names"
            fix = (
                f"beside the whole of it in {str(complete[0])!r}; remove one, or point "
                "--data-dir (or $ESPER_DATA_DIR) at the one to use"
                if complete
                else "complete it (a download does not write over it), or remove what is there"
            )
            raise DatasetNotFoundError(
                f"{files.name}: {str(candidate)!r} holds {held} but not {', '.join(lacking)} "
                f"as files; {fix}"
            )


def _check_compressed(files: DatasetFiles, directory: Path) -> None:
    """Refuse ``directory`` holding required ``.gz`` files uncompressed (as some mirrors and
    other libraries' ``raw/`` folders keep them): a download went past them without a word.

    Raises:
        DatasetNotFoundError: naming them and how to compress them.
    """
    plain = [
        f.removesuffix(".gz")
        for f in files.required
        if f.endswith(".gz") and _is_file(files, directory / f.removesuffix(".gz"))
    ]
    if plain:
        raise DatasetNotFoundError(
            f"{files.name}: {str(directory)!r} holds {', '.join(plain)} uncompressed; Esper "
            f"reads the gzip-compressed files ({', '.join(files.required)}): compress them "
            "with gzip, or remove them"
        )


def _candidates(files: DatasetFiles, bases: Sequence[Path]) -> list[Path]:
    """The directories searched below ``bases``, in order: each base's ``files.subdirs``."""
    return [base / sub if sub else base for base in bases for sub in files.subdirs]


def _complete(files: DatasetFiles, directory: Path) -> bool:
    """Whether ``directory`` holds every file of ``files.required`` as a file."""
    return all(_is_file(files, directory / f) for f in files.required)


def _is_file(files: DatasetFiles, path: Path) -> bool:
    """Whether ``path`` is a file.

    Raises:
        DatasetNotFoundError: a directory above ``path`` cannot be searched (``_refused``).
    """
    mode = _mode(files, path)
    return mode is not None and stat.S_ISREG(mode)


def _mode(files: DatasetFiles, path: Path) -> int | None:
    """``path``'s ``st_mode`` (``leyline.files.file_mode``), None where nothing is there.

    Raises:
        DatasetNotFoundError: a directory above ``path`` cannot be searched (``_refused``).
    """
    try:
        return file_mode(path)
    except PermissionError as err:
        raise _refused(files, path, err) from None
    except OSError:  # e.g. a name too long for the file system: nothing there either
        return None


def _refused(files: DatasetFiles, path: Path, err: OSError) -> DatasetNotFoundError:
    """The error for ``path`` when a directory above it refuses the search: naming that
    directory, not ``path``, which may not exist (the search would name a place it made up)."""
    blocked = next((q.parent for q in (*reversed(path.parents), path) if not _searchable(q)), path)
    return DatasetNotFoundError(
        f"{files.name}: cannot look in {str(blocked)!r} ({err.strerror}); give it search "
        "permission, or point --data-dir (data_dir=...) elsewhere"
    )


def _searchable(path: Path) -> bool:
    """Whether a directory above ``path`` lets it be looked at (it need not exist)."""
    try:
        file_mode(path)
    except PermissionError:
        return False
    except OSError:
        pass  # not refused
    return True


def _not_written(files: DatasetFiles, target: Path, err: OSError) -> DatasetNotFoundError:
    """The error for a download that could not write into its folder ``target``."""
    reason = err.strerror or str(err)
    where = f" ({err.filename})" if err.filename and str(err.filename) != str(target) else ""
    return DatasetNotFoundError(
        f"{files.name} not found, and the download could not be written into {str(target)!r}: "
        f"{reason}{where}; free space there or make it writable, or point --data-dir "
        "(data_dir=...) at a folder that is"
    )


def _not_found(
    files: DatasetFiles,
    searched: Sequence[Path],
    *,
    explicit: bool,
    fetch_allowed: bool,
    download_error: DownloadError | None = None,
) -> DatasetNotFoundError:
    places = "; ".join(str(p) for p in dict.fromkeys(searched))
    fixes = []
    if not explicit:
        fixes += ["pass --data-dir DIR (data_dir=...)", f"set {DATA_DIR_ENV}=DIR"]
    else:
        fixes.append("point --data-dir (data_dir=...) at the folder holding the files")
    if files.install_hint is not None:
        fixes.append(files.install_hint)
    if not fetch_allowed:
        fixes.append("allow the download (--download; download = true in a config file)")
    failed = ""
    if download_error is not None:
        failed = f" The download failed: {str(download_error).rstrip('.')}."
        if isinstance(download_error, DownloadPlaceError):
            fixes.append("move what is in the download's way")
        else:
            fixes.append("retry the download once the network or server is fine")
    return DatasetNotFoundError(
        f"{files.name} not found: no directory holds all of {', '.join(files.required)}. "
        f"Looked in: {places}.{failed} To fix: {', or '.join(fixes)}."
    )
