"""``study.json``: the settings a study started with, compared with the study file's setting by
setting at each invocation, and the attempts and errors per trial."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from esper.leyline.config import UserError, check_int, config_dict
from esper.leyline.files import atomic_write
from esper.leyline.net import hidden_password
from esper.leyline.trials import STUDY_FILE
from esper.nissa import record
from esper.nissa.log import counted
from esper.study.checks import config_changes
from esper.study.spec import StudySpec, with_defaults


@dataclass
class StudyState:
    """``study.json``: the settings the study started with, attempts and errors per trial,
    and the code of each invocation that ran trials (``record.code_record``: when, the
    command, git revision and package versions; a study saved before they were recorded has
    none)."""

    settings: dict[str, Any]
    attempts: dict[str, int]
    errors: dict[str, str]
    invocations: tuple[dict[str, Any], ...] = ()

    def __post_init__(self) -> None:
        for name, count in self.attempts.items():
            check_int(f"attempts of {name!r}", count, 0)

    @classmethod
    def load(cls, directory: Path, settings: dict[str, Any]) -> StudyState:
        """The study's state, or a fresh one; a directory of another study is refused.

        Raises:
            UserError: ``study.json`` is unreadable, or holds different settings.
        """
        path = directory / STUDY_FILE
        if not path.exists():
            return cls(settings, {}, {})
        try:
            state = record.read_record(path, cls, "an Esper study state file", {"invocations": []})
        except record.RunRecordError as err:  # unreadable, not JSON, or not this dataclass
            raise UserError(str(err)) from None
        assert state is not None  # the file exists
        # A setting added to StudySpec since the directory was made is saved as its default.
        saved = _without_data_dirs(_policies_by_id(with_defaults(StudySpec, state.settings)))
        # a store URL's password stays out of the line (a study begun before such URLs were
        # refused keeps one; an edited file may give one)
        changed = [hidden_password(change) for change in _study_changes(saved, settings)]
        if changed:
            raise UserError(
                f"{str(directory)!r} holds a study run with other settings (study -> file: "
                f"{'; '.join(changed)}); use another out, or restore the study file"
            )
        return replace(state, settings=settings)  # saved again as this Esper writes them

    def ran(self, command: Sequence[str]) -> str | None:
        """Record that ``command`` runs trials of the study now (``invocations``); how its
        code differs from the last invocation's ("revision A -> B"), None where it does not
        or there was none."""
        now = record.code_record(command)
        last = self.invocations[-1] if self.invocations else None
        self.invocations = (*self.invocations, now)
        return None if last is None else record.code_changed(last, now)

    def revisions(self) -> str | None:
        """The git revisions the study's invocations ran, in order, as ``results.md`` names
        them: "A" or "A (2 invocations), then B (1)"; None where none was recorded."""
        revisions = (i.get("git_revision") or "unknown" for i in self.invocations)
        runs = [(revision, len(list(same))) for revision, same in itertools.groupby(revisions)]
        if len(runs) <= 1:
            return runs[0][0] if runs else None
        return ", then ".join(f"{r} ({counted(n, 'invocation')})" for r, n in runs)

    def save(self, directory: Path) -> None:
        """Write ``study.json`` atomically."""
        atomic_write(directory / STUDY_FILE, json.dumps(asdict(self), indent=1))


def _study_changes(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``config_changes`` of a study's saved settings and ``now``'s, setting by setting, with
    the arms compared by name: a trial is found by its arm's name, so the arms' order in the
    study file only orders the results, and an arm added or removed is named as such."""
    old_arms, new_arms = _arms_by_name(saved.get("arms")), _arms_by_name(now.get("arms"))
    if old_arms is None or new_arms is None:  # a damaged saved list: compared as it is
        return [c for k in now for c in config_changes(saved.get(k), now[k], k)]
    changed = [c for k in now if k != "arms" for c in config_changes(saved.get(k), now[k], k)]
    for name in sorted(old_arms.keys() | new_arms.keys()):
        if name not in old_arms or name not in new_arms:
            changed.append(f"arms.{name}: {'added' if name in new_arms else 'removed'}")
        else:
            changed.extend(config_changes(old_arms[name], new_arms[name], f"arms.{name}"))
    return changed


def _arms_by_name(arms: Any) -> dict[str, Any] | None:
    """Saved or current arms as a table by name, or None when they are not arm tables with
    distinct names."""
    if not isinstance(arms, list) or not all(
        isinstance(arm, dict) and isinstance(arm.get("name"), str) for arm in arms
    ):
        return None
    by_name = {arm["name"]: {k: v for k, v in arm.items() if k != "name"} for arm in arms}
    return by_name if len(by_name) == len(arms) else None


def _policies_by_id(settings: dict[str, Any]) -> dict[str, Any]:
    """Saved settings with an arm's policy as its run's id, as ``study_settings`` has it: a
    study saved before policies were compared so kept the policy's absolute path, and resumed
    it would be refused as another study."""
    arms = []
    for arm in settings.get("arms") or []:
        policy = arm.get("policy") if isinstance(arm, dict) else None
        if isinstance(policy, str) and os.path.isabs(policy):
            try:
                meta = record.read_meta(Path(policy))
            except record.RunRecordError:
                meta = None  # compared as it is: refused, naming the path
            if meta is not None:
                arm = {**arm, "policy": meta.run_id}
        arms.append(arm)
    return {**settings, "arms": arms} if "arms" in settings else settings


def _without_data_dirs(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings without the budgets' ``data_dir``: like ``out``, it only finds files (a study
    moved with its data, or one saved before ``read_study`` made the path absolute, is the same
    study); each trial's run records the path it read."""

    def without(budget: Any) -> Any:
        return (
            {k: v for k, v in budget.items() if k != "data_dir"}
            if isinstance(budget, dict)
            else budget
        )

    tasks = settings.get("task_budgets")
    if isinstance(tasks, dict):
        settings = {**settings, "task_budgets": {k: without(v) for k, v in tasks.items()}}
    return {**settings, "budget": without(settings["budget"])} if "budget" in settings else settings


def study_settings(spec: StudySpec) -> dict[str, Any]:
    """What must not change between invocations of one study: everything but ``retries``,
    ``reps`` and ``baselines``, which change only how failures are retried and results computed,
    and ``out`` and the budgets' ``data_dir``, which only find files (a moved study, or ``out``
    written another way, is the same study). The resources set a trial's threads and device,
    which a resume must keep. An arm's given policy is its run's id (``meta.json``), not its
    path: a study moved with its policy carries on, and another run put at the policy's path
    is another policy."""
    data = config_dict(spec)
    for arm, table in zip(spec.arms, data["arms"], strict=True):
        meta = None if arm.policy is None else record.read_meta(Path(arm.policy))
        if meta is not None:  # read_study read it (a policy without one was refused)
            table["policy"] = meta.run_id
    kept = {k: v for k, v in data.items() if k not in ("out", "retries", "reps", "baselines")}
    return _without_data_dirs(kept)
