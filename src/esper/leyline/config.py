"""The settings every run shares: host training and telemetry (DESIGN §8, "one config tree").

``HostTraining`` is the one host-training block. It is nested in the growth-run config
(``esper static|heuristic|eval``) and in Simic's ``TrainingConfig`` (``esper ppo``), read by
Tolaria's ``Trainer`` and by the episode, and resolved against its task in exactly one function,
``esper.tasks.resolve_training``: a field left ``None`` takes the task's default there.

Every field's docstring is its ``--help`` text. Values are validated at construction, so a flag,
a config file and a hand-edited ``config.json`` fail with the same one-line message.
"""

from __future__ import annotations

import datetime
import functools
import json
import math
import numbers
import re
import tomllib
import types
import typing
import urllib.parse
from collections.abc import Collection
from dataclasses import asdict, dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal, NoReturn, TypeVar, get_args

from esper.leyline.slots import ordered_slots

MAX_INT64 = 2**63 - 1
"""The largest count an int64 holds (parameter counts, steps, statistics): what torch and JSON
readers store, so the bound of any count that has no smaller natural one."""

MAX_SEED = 2**32 - 1
"""The largest seed: torch's CPU generator keeps a seed's low 32 bits, so seeds 0 and 2**32
draw the same numbers (two "different" seeds of a study would be one run counted twice)."""

MAX_COUNT = 10**7
"""Upper bound of epochs, batch sizes, sample counts: far above any run this machine can hold,
low enough that a typo (1e9 epochs) fails up front rather than after hours."""

MAX_WIDTH = 4096
"""Largest host width: a 4096-channel CNN or a 4096-dimensional transformer already has tens of
millions of parameters per layer, far beyond what Esper's tasks train; larger is a typo."""

TelemetryName = Literal["minimal", "normal", "debug"]
TELEMETRY_LEVELS: tuple[str, ...] = get_args(TelemetryName)
"""``TelemetrySettings.level`` choices, ``TelemetryLevel``'s names (a test keeps them equal)."""
Precision = Literal["float32", "bfloat16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
C = TypeVar("C")
N = TypeVar("N", int, float)


class UserError(Exception):
    """An expected failure caused by input (a flag, a file, a run directory): the ``esper``
    command reports it as one line, exit code 2, no traceback."""


_TOO_MANY_DIGITS = re.compile(
    r"Exceeds the limit \((\d+) digits\) for integer string conversion(?:: value has (\d+) digits)?"
)


def first_line(err: BaseException) -> str:
    """An error's first line for a one-line message (a library's may run on with detail), or
    its repr when it has no message."""
    return (str(err).splitlines() or [repr(err)])[0]


def error_text(err: BaseException) -> str:
    """``str(err)`` as a user reads it: Python's refusal to convert an integer of over 4,300
    digits, whose advice (``sys.set_int_max_str_digits``) is for programmers, says what it is."""
    found = _TOO_MANY_DIGITS.match(str(err))
    if found is None:
        return str(err)
    limit, digits = found.groups()
    if digits is None:  # writing one out: a hexadecimal TOML integer is read at any length
        return f"an integer of over {limit} digits"
    return f"a {digits}-digit integer; at most {limit} digits are read"


def json_reason(err: BaseException) -> str:
    """Why reading JSON failed, for an error line: where the syntax breaks, ``nested too
    deeply`` (Python's recursion limit), else ``error_text``'s wording (an integer of over
    4,300 digits, bytes that are not UTF-8, a key a hook refused). Every JSON reader says it
    this way."""
    if isinstance(err, json.JSONDecodeError):
        where = f"line {err.lineno}, column {err.colno}"
        if err.msg.endswith(" at"):  # "Unterminated string starting at" is followed by where
            return f"invalid JSON: {err.msg} {where}"
        return f"invalid JSON at {where}: {err.msg}"
    if isinstance(err, RecursionError):
        return "nested too deeply"
    return error_text(err)


def quoted(value: object, limit: int = 40, as_json: bool = False) -> str:
    """``repr(value)`` for an error line (with ``as_json``, the value as JSON writes it: a
    config file's), cut to its first ``limit`` characters when longer (a 4,000-digit number or
    a pasted file as a flag's value), the length counted in the value's characters (a
    string's, a number's digits)."""
    if isinstance(value, datetime.date | datetime.time):  # a TOML date, time or date-time
        return f"{value.isoformat()} (a TOML date or time)"
    try:
        text = json.dumps(value, default=_written) if as_json else repr(value)
    except ValueError as err:  # an integer too long to write out in decimal
        return error_text(err)
    if len(text) <= limit:
        return text
    size = len(value) if isinstance(value, str) else len(text)
    return f"{text[:limit]}... ({size} characters)"


def _written(value: object) -> str:
    """A value JSON cannot write, as text: a TOML date or time as ISO 8601, else its repr."""
    return value.isoformat() if isinstance(value, datetime.date | datetime.time) else repr(value)


def require(ok: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``ok`` (the one-line error every setting uses)."""
    if not ok:
        raise ValueError(message)


def check_int(name: str, value: object, low: int = 1, high: int = MAX_COUNT) -> None:
    """``value`` is an integer (not a bool) in ``[low, high]``, else a one-line error."""
    ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    if not ok and _numpy_number(value, integral=True) and low <= int(value) <= high:  # type: ignore[call-overload]
        _refuse_numpy(name, value, "int")
    require(ok, f"{name} must be an integer in [{low}, {high}], got {quoted(value)}")


def _numpy_number(value: object, integral: bool = False) -> bool:
    """``value`` is one of numpy's numbers (not a subclass of Python's, as float64 is)."""
    builtin = isinstance(value, int | float)
    return not builtin and is_number(value, integral) and type(value).__module__ == "numpy"


def _refuse_numpy(name: str, value: object, kind: str) -> NoReturn:
    """A numpy number that would pass as Python's ``kind`` is named as one (its repr,
    ``np.int64(4)``, read as a value out of range); settings hold Python numbers, which JSON
    and TOML write."""
    raise ValueError(
        f"{name} must be a Python {kind}, got numpy's {type(value).__name__} {value} "
        f"(convert it with {kind}())"
    )


def is_plain_number(value: object) -> bool:
    """``value`` is a Python int or float (or a subclass, as numpy's float64), not a bool: a
    number JSON writes and reads back as it was."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_finite_number(value: object) -> bool:
    """``value`` is a plain number (``is_plain_number``) and finite: a measured value."""
    return is_plain_number(value) and math.isfinite(value)  # type: ignore[arg-type]


def measured(value: N | None) -> N | None:
    """``value`` when it is a measured value (``is_finite_number``), else None: how a summary,
    a snapshot or a progress line holds a missing, NaN or infinite one."""
    return value if is_finite_number(value) else None


def check_finite(name: str, value: object) -> None:
    """``value`` is a finite plain number (``is_finite_number``), else a one-line error."""
    ok = is_finite_number(value)
    require(ok, f"{name} must be a finite number (a Python int or float), got {quoted(value)}")


def is_number(value: object, integral: bool = False) -> bool:
    """``value`` is a real number (an integer with ``integral``), Python's or numpy's, and not a
    bool."""
    kind = numbers.Integral if integral else numbers.Real
    return isinstance(value, kind) and not isinstance(value, bool)


def check_float(
    name: str, value: object, low: float, high: float, strict_low: bool = False
) -> None:
    """``value`` is a finite number in ``(low, high]`` (``strict_low``) or ``[low, high]``."""
    ok = is_finite_number(value) and (value > low if strict_low else value >= low) and value <= high  # type: ignore[operator]
    if not ok and _numpy_number(value):
        converted = float(value)  # type: ignore[arg-type]
        fits = (converted > low if strict_low else converted >= low) and converted <= high
        if math.isfinite(converted) and fits:
            _refuse_numpy(name, value, "float")
    bound = "(" if strict_low else "["
    require(ok, f"{name} must be a number in {bound}{low}, {high}], got {quoted(value)}")


def check_bool(name: str, value: object) -> None:
    """``value`` is ``True`` or ``False`` (a JSON 1 is not)."""
    require(isinstance(value, bool), f"{name} must be true or false, got {quoted(value)}")


@dataclass(frozen=True)
class HostTraining:
    """Task, host training and slots.

    Attributes:
        task: task preset (host + data + defaults); esper --help lists them.
        epochs: host epochs per episode (None: the task's default).
        batch_size: training batch size (None: the task's).
        batches_per_epoch: training batches per epoch (None: the task's; a full pass if unset).
        val_samples: validation samples per epoch (None: the task's; all if unset).
        lr: AdamW learning rate of the host and fossilized seeds (None: the task's).
        seed_lr: AdamW learning rate of live seeds (None: lr).
        weight_decay: AdamW decoupled weight decay.
        threads: torch intra-op threads per environment worker (None: 1, the thread policy of
            ``esper.tolaria.threads``; workers x threads may not exceed the usable cores). The
            count changes results, so the run records it and a resume must match it.
        precision: arithmetic of the training forward pass: float32, or bfloat16 under a
            torch autocast (convolutions and matrix products in bfloat16; weights, optimizer
            state, losses and validation in float32). On a CPU with AMX it trained a width-16
            CNN host 1.6x faster, but tiny CNN and transformer hosts 0.4-0.9x as fast
            (docs/benchmarks.md); on a CPU without AMX or AVX-512 BF16 it is emulated, 10x
            slower (a run there warns). A different computation: results differ from
            float32's (docs/results.md section 11).
        slots: slots a controller may grow in.
        width: host width: CNN base channels / transformer model dimension, a multiple of its
            attention heads (None: the task's).
        shapley: also measure exact Shapley values of blended seeds every epoch (2^n forwards).
        auto_advance: after each decision, advance every seed whose next gate (G1, G2, G3)
            passes, as if the controller had chosen ADVANCE; a refusing gate leaves the seed
            where it is. Germinate, alpha target, prune and fossilize stay the controller's; a
            policy's or the random controller's ADVANCE is masked out (the op head keeps it).
        data_dir: dataset directory or text file (None: the standard locations); only for the
            tasks whose dataset is read from files (Fashion-MNIST, CIFAR-10, text).
        download: whether a missing dataset may be downloaded.
    """

    task: str
    epochs: int | None = None
    batch_size: int | None = None
    batches_per_epoch: int | None = None
    val_samples: int | None = None
    lr: float | None = None
    seed_lr: float | None = None
    weight_decay: float = 0.0
    threads: int | None = None
    precision: Precision = "float32"
    slots: tuple[str, ...] = ("early", "mid", "late")
    width: int | None = None
    shapley: bool = False
    auto_advance: bool = False
    data_dir: str | None = None
    download: bool = True

    def __post_init__(self) -> None:
        require(isinstance(self.task, str), f"task must be a task name, got {self.task!r}")
        for name in ("epochs", "batch_size", "batches_per_epoch", "val_samples"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name))
        for name in ("lr", "seed_lr"):
            if getattr(self, name) is not None:
                check_float(name, getattr(self, name), 0.0, 10.0, strict_low=True)
        check_float("weight_decay", self.weight_decay, 0.0, 10.0)
        if self.threads is not None:
            check_int("threads", self.threads, 1, 1024)
        require(
            self.precision in PRECISIONS,
            f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}",
        )
        require(
            isinstance(self.slots, tuple | list)
            and bool(self.slots)
            and all(isinstance(s, str) for s in self.slots),
            f"slots must be a non-empty list of slot names, got {self.slots!r}",
        )
        object.__setattr__(self, "slots", ordered_slots(self.slots))
        if self.width is not None:
            check_int("width", self.width, 1, MAX_WIDTH)
        check_bool("shapley", self.shapley)
        check_bool("auto_advance", self.auto_advance)
        check_bool("download", self.download)
        require(
            self.data_dir is None or (isinstance(self.data_dir, str) and self.data_dir != ""),
            f"data_dir must be a path or null, got {quoted(self.data_dir)}",
        )

    @property
    def resolved(self) -> bool:
        """Whether the task's defaults have been filled in (``esper.tasks.resolve_training``)."""
        return None not in (self.epochs, self.batch_size, self.lr, self.seed_lr)

    def episode_length(self) -> int:
        """``epochs`` of a resolved block.

        Raises:
            ValueError: the block was not resolved against its task.
        """
        require(self.epochs is not None, "host training is not resolved (epochs is None)")
        assert self.epochs is not None
        return self.epochs


COMPARED_SETTINGS = (
    "batch_size", "batches_per_epoch", "val_samples", "lr", "weight_decay", "precision"
)  # fmt: skip
"""The ``HostTraining`` settings two runs of one task and length must share for their accuracies
to compare like for like (an eval keeps its policy's, a tiny preset's 4 batches per epoch,
unless told otherwise; ``esper report``'s baseline warning, ``esper runs compare``). Not the
width: a static host widened to a grown one's size is the baseline that asks "per parameter"."""


PPO_RESUME_SETTINGS = (("ppo", "rounds"), ("runtime", "ray_address"))
"""The ``TrainingConfig`` settings (section, field) ``esper ppo --resume RUN`` may change, and
then saves in the run's ``config.json``: more rounds (a finished run trains on), and the cluster
its workers join (where they run is not one of the run's settings: another head's address, or
the same head's under another name). Their flags: ``--ppo.rounds``, ``--ray-address``."""


def setting_text(name: str, value: Any) -> str:
    """A resolved ``HostTraining`` setting's value for people: None is what it means ("all"
    batches per epoch, "all" validation samples); a list (the slots) as "early, mid"."""
    if value is None:
        return "all" if name in ("batches_per_epoch", "val_samples") else "none"
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value)) or "none"
    return str(value)


@dataclass(frozen=True)
class TelemetrySettings:
    """What a run logs beyond its event log.

    Attributes:
        level: telemetry level of the event log, and of what TensorBoard and MLflow get
            (minimal: a growth run's start, end and governor panics, not its epochs; PPO rounds
            stay).
        tensorboard: also write TensorBoard scalars, hyperparameters and the configuration to
            tensorboard/ in the run directory.
        mlflow: also track the run in MLflow at this tracking URI (http://HOST:PORT or
            https://HOST for a tracking server, sqlite:///PATH or a postgresql:// or mysql://
            database): the configuration as parameters, metrics per epoch or round, the summary
            as an artifact, the end status. None: no MLflow.
    """

    level: TelemetryName = "normal"
    tensorboard: bool = False
    mlflow: str | None = None

    def __post_init__(self) -> None:
        require(
            self.level in TELEMETRY_LEVELS,
            f"telemetry level must be one of {', '.join(TELEMETRY_LEVELS)}, got {self.level!r}",
        )
        check_bool("tensorboard", self.tensorboard)
        if self.mlflow is not None:
            check_tracking_uri("mlflow", self.mlflow)


MLFLOW_PASSWORD = (
    "give it outside the URI: MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or "
    "MLFLOW_TRACKING_TOKEN) for a tracking server, PGPASSWORD or ~/.pgpass for PostgreSQL, "
    "an option file the URI names (?read_default_file=PATH) for MySQL"
)
"""Where an MLflow tracking URI's password goes instead (MLflow and the drivers read them)."""


TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql")
"""The MLflow tracking URIs a run accepts: a tracking server, or a database MLflow writes to
directly (a SQLAlchemy URL, optionally naming its driver: ``postgresql+psycopg://``). MLflow 3
refuses its old ``file:`` store unless told otherwise, so it is not offered."""


def check_tracking_uri(name: str, value: object) -> None:
    """``value`` is an MLflow tracking URI of an accepted form (``TRACKING_SCHEMES``) that names
    where it points: a host for a server or database, a file for SQLite."""
    text = value if isinstance(value, str) else ""
    scheme, _, rest = text.partition("://")
    scheme = scheme.lower().partition("+")[0]
    # sqlite:///PATH (three slashes, a relative path; four, an absolute one): the host is empty
    where = (rest[1:] if rest.startswith("/") else "") if scheme == "sqlite" else rest.split("/")[0]
    require(
        scheme in TRACKING_SCHEMES and bool(where.strip()) and "\0" not in text and _splits(text),
        f"{name} must be an MLflow tracking URI: http://HOST:PORT, https://HOST, "
        f"sqlite:///PATH, postgresql://... or mysql://...; got {value!r}",
    )


def _splits(uri: str) -> bool:
    """Whether ``uri``'s host can be read (``http://[::1`` or ``https://[zz]`` cannot: a
    bracketed host must be an IPv6 address). A bad port is the tracking sink's to name."""
    try:
        urllib.parse.urlsplit(uri).hostname  # noqa: B018 - raises ValueError for a bad URL
    except ValueError:
        return False
    return True


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _as_written(value: Any) -> str:
    """A value of a config file or record in an error line, as JSON writes it, cut short."""
    return quoted(value, as_json=True)


def optional_type(kind: Any) -> tuple[Any, bool]:
    """``(X, True)`` for the annotation ``X | None`` (the only union used), else (kind, False)."""
    if typing.get_origin(kind) in (types.UnionType, typing.Union):
        (inner,) = [a for a in typing.get_args(kind) if a is not type(None)]
        return inner, True
    return kind, False


def decode(kind: Any, value: Any, where: str = "", base: Any = None) -> Any:
    """``value`` (parsed JSON or TOML) checked against the annotation ``kind`` and built as it.

    The one strict reader of settings and records (config files, ``config.json``, run
    summaries, checkpoint manifests): dataclasses (nested), ``X | None``, ``tuple[X, ...]``,
    ``dict[str, X]``, ``Literal``, int, float (an int is accepted), str, bool and ``Any``. A
    dataclass takes a table with no unknown key; with ``base`` (an instance) a missing key keeps
    ``base``'s value, without it every field must be present; each dataclass then validates its
    own values. Nothing recurses deeper than the type, so hostile nesting fails at once.

    Raises:
        ValueError: one line naming the key (``where``), the bad value and what is accepted.
    """
    kind, optional = optional_type(kind)
    if kind is Any or (optional and value is None):
        return value
    if isinstance(kind, type) and is_dataclass(kind):
        return _decode_dataclass(kind, value, where, base)
    name, origin, args = where or "the value", typing.get_origin(kind), typing.get_args(kind)
    if origin is Literal:
        accepted = ", ".join(map(str, args))
        if value not in args:
            raise ValueError(f"{name} must be one of {accepted}, got {_as_written(value)}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{name} must be a list, got {_as_written(value)}")
        return tuple(decode(args[0], v, f"{name}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{name} must be a table, got {_as_written(value)}")
        return {k: decode(args[1], v, f"{name}.{k}") for k, v in value.items()}
    if kind is float and type(value) is int:
        return float(value)
    ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
    require(ok, f"{name} must be {_TYPE_NAMES[kind]}, got {_as_written(value)}")
    return value


def _decode_dataclass(cls: type, value: Any, where: str, base: Any) -> Any:
    table = where or "the top level"
    if not isinstance(value, dict):
        raise ValueError(f"{table} must be a table of settings, got {_as_written(value)}")
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(value) - set(names))
    accepted = ", ".join(sorted(names))
    require(not unknown, f"unknown key(s) {unknown} in {table}; accepted: {accepted}")
    missing = [n for n in names if n not in value]
    require(base is not None or not missing, f"missing key(s) {missing} in {table}")
    hints, prefix = _field_types(cls), f"{where}." if where else ""
    decoded = {
        n: decode(hints[n], value[n], prefix + n, None if base is None else getattr(base, n))
        for n in value
    }
    try:
        return cls(**decoded) if base is None else replace(base, **decoded)
    except (ValueError, TypeError) as err:
        text = str(err)  # "resources.cpus must be ..." names its table already
        named = not where or text.startswith((f"{where}.", f"{where} "))
        raise ValueError(text if named else f"{where}: {text}") from None


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """``cls``'s resolved annotations: resolving them costs more than decoding a table."""
    return typing.get_type_hints(cls)


def check_sections(obj: Any) -> None:
    """Each field of the config dataclass ``obj`` declared as a dataclass holds one: a table
    given as a dict, ``None`` or the class itself was accepted and failed far from here.

    Raises:
        ValueError: naming the field, the value and the class it needs.
    """
    cls: type = type(obj)
    hints = _field_types(cls)
    for f in fields(obj):
        kind, value = hints[f.name], getattr(obj, f.name)
        if isinstance(kind, type) and is_dataclass(kind) and not isinstance(value, kind):
            got = f"the class {value.__name__}" if isinstance(value, type) else quoted(value)
            raise ValueError(f"{f.name} must be a {kind.__name__} instance, got {got}")


def override(obj: C, data: object) -> C:
    """``obj`` (a frozen config dataclass) with the settings in ``data`` replaced (``decode``
    with ``obj`` as the base).

    Raises:
        ValueError: for an unknown key, a value of the wrong type or a bad value.
    """
    result: C = decode(type(obj), data, "", obj)
    return result


def config_dict(obj: Any) -> dict[str, Any]:
    """A config dataclass as plain data (tuples as lists): what ``config.json`` holds."""
    data: dict[str, Any] = json.loads(json.dumps(asdict(obj)))
    return data


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's members, refusing a key given twice (as TOML does): which of two values
    would count is easy to get wrong, and the file is usually a typo."""
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"key {key!r} is given twice")
        seen[key] = value
    return seen


def read_config_file(path: Path) -> dict[str, Any]:
    """The settings in a TOML (``.toml``) or JSON (any other name) config file.

    Raises:
        ValueError: for an unreadable file or invalid syntax, naming the file.
    """
    toml = path.suffix == ".toml"
    try:
        if path.is_dir() or path.is_char_device() or path.is_block_device():  # /dev/zero: endless
            raise ValueError("a directory or a device, not a file")
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark some editors write
        data = tomllib.loads(text) if toml else json.loads(text, object_pairs_hook=_unique_keys)
    except (OSError, ValueError, RecursionError) as err:  # TOML's and JSON's errors: ValueErrors
        hint = "" if toml or path.suffix == ".json" else " (read as JSON: only .toml is TOML)"
        raise ValueError(
            f"cannot read config file {str(path)!r}{hint}: {json_reason(err)}"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(path)!r} must hold a table of settings")
    return data


_TOML_ESCAPED = re.compile("[\x7f\ud800-\udfff]")
"""What JSON leaves unescaped (``ensure_ascii=False``) that TOML's strings must escape: DEL,
and lone surrogates (which no TOML file can hold)."""


def _toml_line(key: str, value: Any) -> str:
    # JSON's strings, numbers, booleans and arrays are TOML's; TOML has no null, so an unset
    # value is a comment (reading the text back leaves it at its default, which is unset).
    # Characters as they are: JSON's \ud83d\ude00 for one outside the BMP is no TOML escape.
    text = json.dumps(value, ensure_ascii=False)
    text = _TOML_ESCAPED.sub(lambda m: f"\\u{ord(m[0]):04x}", text)
    return f"# {key}: not set" if value is None else f"{key} = {text}"


def config_text(obj: Any, unread: Collection[str] = ()) -> str:
    """The effective configuration as TOML (``key = value`` lines under ``[group]`` headers),
    printed at the start of every run; saved to a file it is a valid ``--config``. ``unread``:
    top-level settings the run does not read (left out: their defaults would read as the
    run's)."""
    top: list[str] = []
    groups: list[str] = []
    for name, value in config_dict(obj).items():
        if name in unread:
            continue
        if isinstance(value, dict):
            groups.append(f"[{name}]")
            groups += [_toml_line(k, v) for k, v in value.items()]
        else:
            top.append(_toml_line(name, value))
    return "\n".join(top + groups)
