"""The live terminal UI (Textual): follow a run as it trains, or replay a finished one.

The app reads a run directory's ``events.jsonl`` through ``esper.nissa.log.EventTail``: it folds
the records already there (a finished run is replayed whole), then polls for new ones every
``POLL_SECONDS``. A malformed line found while following stops the following and shows the error
instead of crashing. The display state lives in ``esper.karn.tui_state`` (pure Python); this
module only lays it out. ``HELP_TEXT`` (the ``?`` screen) describes each panel; the highlighted
row of the environment table selects the environment the slot panel and the accuracy sparkline
show (for PPO, the episode being played: each episode starts a new history).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Header, Input, Label, Log, Sparkline, Static

from esper.karn.tui_state import (
    LOG_LINES,
    EnvView,
    RunView,
    SlotRow,
    integer,
    matches,
    number,
)
from esper.leyline.stages import SeedStage
from esper.nissa.log import EventLogError, EventTail, RunDirectory, display, percent

POLL_SECONDS = 0.5
"""How often a followed event log is polled: quick enough to feel live, cheap when idle."""

STALLED_SECONDS = 5.0
"""A last line left without its newline this long is reported: the writer flushes whole lines
in one write, so a partial line that stays is a run that died while writing it."""

ENV_COLUMNS: tuple[tuple[str, str, Callable[[EnvView], str]], ...] = (
    ("env", "env", lambda v: display(v.env)),  # "—" for a single-model run's only environment
    ("episode", "episode", lambda v: display(v.episode)),
    ("epoch", "epoch", lambda v: display(v.epoch)),
    ("val_accuracy", "val acc", lambda v: percent(v.val_accuracy)),
    ("val_loss", "val loss", lambda v: display(v.val_loss, ".4f")),
    ("params", "params", lambda v: display(v.params)),
)
"""Per-environment table: column key, heading and cell."""

STAGE_STYLES = {
    SeedStage.DORMANT: "dim",
    SeedStage.GERMINATED: "cyan",
    SeedStage.TRAINING: "cyan",
    SeedStage.BLENDING: "yellow",
    SeedStage.HOLDING: "yellow",
    SeedStage.FOSSILIZED: "bold green",
    SeedStage.PRUNED: "red",
    SeedStage.EMBARGOED: "dim red",
    SeedStage.RESETTING: "dim red",
}
"""How each lifecycle stage is coloured in the slot panel."""

_STYLES = {stage.value: style for stage, style in STAGE_STYLES.items()}

HELP_TEXT = f"""\
esper tui — keys

  q          quit (a run started with --tui is interrupted: it checkpoints and can be resumed)
  ?          this help (escape, q or ? closes it)
  /          filter the event log: lines containing the text (case-insensitive)
  escape     clear the filter and go back to the environment table
  n / p      next / previous environment (or ↑ ↓ in the environment table)

Panels
  environments  latest epoch of each environment: episode, epoch, val accuracy, val loss, params
  slots         the selected environment's slots: stage, blueprint, α, counterfactual
                contribution and Shapley value (accuracy points), seed parameters
  accuracy      val accuracy per epoch of the selected environment's current episode
  run / PPO     status and result; for PPO runs the latest round's update statistics and the
                mean return per round
  events        one line per event (the last {LOG_LINES} are kept); "—" marks a value that
                was not measured
"""


def env_row_key(key: int | None) -> str:
    """The environment table's row key of environment ``key``."""
    return "run" if key is None else str(key)


SLOT_COLUMNS: tuple[tuple[str, str, Callable[[SlotRow], str | Text]], ...] = (
    ("slot", "slot", lambda r: r.slot),
    ("stage", "stage", lambda r: Text(display(r.stage), style=_STYLES.get(r.stage or "", ""))),
    ("blueprint", "blueprint", lambda r: display(r.blueprint)),
    ("alpha", "α", lambda r: display(r.alpha, ".2f")),
    ("contribution", "contribution", lambda r: display(r.contribution, "+.2f")),
    ("shapley", "shapley", lambda r: display(r.shapley, "+.2f")),
    ("seed_params", "seed params", lambda r: display(r.seed_params)),
)
"""Slot panel: column key, heading and cell (the stage coloured by ``STAGE_STYLES``; an unknown
stage name, which a log may hold, unstyled)."""


def env_cells(view: EnvView) -> tuple[str, ...]:
    """One environment's table row, in ``ENV_COLUMNS`` order."""
    return tuple(cell(view) for _, _, cell in ENV_COLUMNS)


def slot_cells(row: SlotRow) -> tuple[str | Text, ...]:
    """One slot's row, in ``SLOT_COLUMNS`` order."""
    return tuple(cell(row) for _, _, cell in SLOT_COLUMNS)


PPO_LABEL_WIDTH = 20
"""PPO panel: the label column's width (the longest field name, "mean final accuracy", + 1)."""


def ppo_text(view: RunView) -> str:
    """The PPO panel: the latest round's update statistics and the anomaly counts."""
    ppo = view.ppo
    rows: list[tuple[str, str]] = [
        ("round", display(ppo.round)),
        ("env steps", display(ppo.env_steps)),
    ]
    for key, value in ppo.stats.items():  # every PPOUpdate statistic, named by its field
        shown = ("yes" if value else "no") if isinstance(value, bool) else display(value, ".4g")
        rows.append((key.replace("_", " "), shown))
    rows += [("anomalies", str(ppo.anomalies)), ("ratio explosions", str(ppo.ratio_explosions))]
    return "\n".join(f"{label:<{PPO_LABEL_WIDTH}}{value}" for label, value in rows)


class HelpScreen(ModalScreen[None]):
    """The keyboard help, over the main screen."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss", "Close"),
        Binding("q", "dismiss", "Close", show=False),
        Binding("question_mark", "dismiss", "Close", show=False),
    ]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Static { width: auto; max-width: 100; border: round $accent; padding: 1 2;
                          background: $surface; }
    """

    def compose(self) -> ComposeResult:
        yield Static(HELP_TEXT, id="help", markup=False)


class RunApp(App[None]):
    """The terminal UI of one run.

    Args:
        run: the run directory (already validated with ``open_run``).
        tail: the event log's tail, positioned after ``records``.
        records: the records already read (a finished run's whole log).
        poll_seconds: how often to poll ``tail`` for new records.
        exit_code: for a run this process started (``--tui``): returns the child's exit code
            once it has exited, else None; the status line reports it.
    """

    TITLE = "esper"
    CSS = """
    #top { height: auto; max-height: 60%; }
    #left { width: 2fr; height: auto; }
    #right { width: 1fr; height: auto; padding: 0 1; }
    .heading { text-style: bold; color: $accent; }
    #envs { height: auto; max-height: 12; }
    #slots { height: auto; max-height: 10; }
    #accuracy, #returns { height: 3; }
    #error { color: $error; text-style: bold; display: none; }
    #error.shown { display: block; }
    #log { height: 1fr; border-top: solid $accent; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("slash", "focus_filter", "Filter", key_display="/"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
        Binding("n", "next_env", "Next env"),
        Binding("p", "previous_env", "Prev env"),
    ]

    def __init__(
        self,
        run: RunDirectory,
        tail: EventTail,
        records: Iterable[dict[str, Any]] = (),
        *,
        poll_seconds: float = POLL_SECONDS,
        exit_code: Callable[[], int | None] | None = None,
        stalled_seconds: float = STALLED_SECONDS,
    ) -> None:
        super().__init__()
        self.run_directory = run
        self.tail = tail
        self.view = RunView()
        self.selected: int | None = None
        self.query_text = ""
        self.error: str | None = None
        self.child_code: int | None = None
        self._pending = list(records)
        self._poll_seconds = poll_seconds
        self._stalled_seconds = stalled_seconds
        self._partial_since: float | None = None  # when the current partial last line appeared
        self._shown_stalled = False  # whether the status on screen reports a stalled line
        self._exit_code = exit_code
        self._timer: Timer | None = None
        self.title = f"esper tui — {run.name} ({run.mode} {run.task})"
        # The panels, kept by reference: a timer tick must reach them while the help is open.
        self.envs_table: DataTable[str] = DataTable(id="envs", cursor_type="row")
        self.slots_title = Label("Slots", id="slots-title", classes="heading")
        self.slots_table: DataTable[str | Text] = DataTable(
            id="slots", cursor_type="none", show_cursor=False
        )
        self.accuracy_title = Label("Val accuracy", id="accuracy-title", classes="heading")
        self.accuracy = Sparkline([], id="accuracy")
        self.run_panel = Static("", id="run", markup=False)
        self.ppo_panel = Static("", id="ppo", markup=False)
        self.returns = Sparkline([], id="returns")
        self.error_line = Static("", id="error", markup=False)
        self.filter_input = Input(
            placeholder="filter events (/ to focus, escape to clear)", id="filter"
        )
        self.log_panel = Log(id="log", max_lines=LOG_LINES)

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="top"):
            with Vertical(id="left"):
                yield Label("Environments", classes="heading")
                yield self.envs_table
                yield self.slots_title
                yield self.slots_table
                yield self.accuracy_title
                yield self.accuracy
            with Vertical(id="right"):
                yield Label("Run", classes="heading")
                yield self.run_panel
                with Vertical(id="ppo-box"):
                    yield Label("PPO", classes="heading")
                    yield self.ppo_panel
                    yield Label("Mean return per round", classes="heading")
                    yield self.returns
        yield self.error_line
        yield self.filter_input
        yield self.log_panel
        yield Footer()

    def on_mount(self) -> None:
        for key, heading, _ in ENV_COLUMNS:
            self.envs_table.add_column(heading, key=key)
        for key, heading, _ in SLOT_COLUMNS:
            self.slots_table.add_column(heading, key=key)
        records, self._pending = self._pending, []
        self.ingest(records)
        self.query_one("#ppo-box").display = self.view.is_ppo
        self.envs_table.focus()
        self._timer = self.set_interval(self._poll_seconds, self.poll)

    # following ----------------------------------------------------------------------------

    def poll(self) -> None:
        """Read what the log gained since the last poll (and whether the child exited)."""
        if self.error is not None:
            return
        if self._exit_code is not None and self.child_code is None:
            self.child_code = self._exit_code()  # before reading, so its last lines are read
        try:
            records = self.tail.poll()
        except (EventLogError, OSError) as err:
            self.stop_following(str(err))
            return
        if records or not self.tail.partial:
            self._partial_since = None
        elif self._partial_since is None:
            self._partial_since = time.monotonic()
        if records or self.child_code is not None:
            self.ingest(records)
        elif self.stalled != self._shown_stalled:
            self._refresh_status()

    @property
    def stalled(self) -> bool:
        """Whether the log has ended in a partial line for ``stalled_seconds`` (a crash)."""
        since = self._partial_since
        return since is not None and time.monotonic() - since >= self._stalled_seconds

    def ingest(self, records: list[dict[str, Any]]) -> None:
        """Fold ``records`` into the view and update every panel once."""
        lines = [self.view.apply(record) for record in records]
        shown = [line.text for line in lines if matches(line, self.query_text)]
        if shown:
            self.log_panel.write_lines(shown[-LOG_LINES:])  # a long replay: only what is kept
        if records:
            if self.selected not in self.view.envs:
                keys = self.view.env_keys()
                self.selected = keys[0] if keys else None
            self._refresh_envs()
            self._refresh_selected()
            self._refresh_ppo()
        self._refresh_status()

    def stop_following(self, message: str) -> None:
        """Stop polling and show ``message`` (the UI stays up with what was read)."""
        self.error = message
        if self._timer is not None:
            self._timer.stop()
        self.error_line.update(f"stopped following: {message}")
        self.error_line.add_class("shown")
        self._refresh_status()
        self.notify(message, title="event log error", severity="error", timeout=10)

    # panels -------------------------------------------------------------------------------

    def status_text(self) -> str:
        """The run's state in words: following, finished (and how), or stopped by an error."""
        if self.error is not None:
            return "stopped following (event log error)"
        if self.view.finished:
            state = f"finished ({self.view.status})"
        elif self.child_code is not None:
            state = "stopped without an end record"
        elif self.stalled:
            state = "following — the last line is incomplete (did the run crash while writing?)"
        else:
            state = "following (live)"
        if self.child_code is not None:
            state += f", exit code {self.child_code}"
        return state

    def _refresh_status(self) -> None:
        self._shown_stalled = self.stalled
        self.sub_title = self.status_text()
        view = self.view
        lines = [
            f"{'run':<9}{self.run_directory.name}",
            f"{'mode':<9}{display(view.mode)} {display(view.task)}",
            f"{'status':<9}{self.status_text()}",
        ]
        if view.is_ppo:
            lines.append(f"{'envs':<9}{len(view.envs)}")
        else:
            epoch = view.envs[None].epoch if None in view.envs else None
            lines.append(f"{'epoch':<9}{display(epoch)} / {display(view.max_epochs)}")
        lines.append(f"{'events':<9}{view.events}")
        lines.append(f"{'panics':<9}{sum(env.panics for env in view.envs.values())}")
        if view.finish is not None and not view.is_ppo:
            f = view.finish
            lines.append(
                f"{'final':<9}{percent(number(f, 'final_val_accuracy'))} "
                f"(best {percent(number(f, 'best_val_accuracy'))})"
            )
            lines.append(
                f"{'seeds':<9}{display(integer(f, 'fossilized'))} fossilized, "
                f"{display(integer(f, 'pruned'))} pruned"
            )
        self.run_panel.update("\n".join(lines))

    def _refresh_envs(self) -> None:
        table = self.envs_table
        keys = self.view.env_keys()
        if [row.key.value for row in table.ordered_rows] != [env_row_key(k) for k in keys]:
            table.clear()
            for key in keys:
                table.add_row(*env_cells(self.view.envs[key]), key=env_row_key(key))
            if self.selected in keys:
                table.move_cursor(row=keys.index(self.selected))
            return
        for key in keys:
            for (column, _, _), value in zip(
                ENV_COLUMNS, env_cells(self.view.envs[key]), strict=True
            ):
                table.update_cell(env_row_key(key), column, value)

    def _refresh_selected(self) -> None:
        """The slot panel and the accuracy sparkline of the selected environment."""
        self.slots_table.clear()
        if self.selected not in self.view.envs:
            self.accuracy.data = []
            return
        view = self.view.envs[self.selected]
        where = "" if view.env is None else f" (env {view.env})"
        self.slots_title.update(f"Slots{where}")
        for row in view.slots:
            self.slots_table.add_row(*slot_cells(row), key=row.slot)
        measured = [acc for _, acc in view.history if acc is not None]
        self.accuracy.data = measured
        episode = "" if view.episode is None else f", episode {view.episode}"
        self.accuracy_title.update(
            f"Val accuracy{where}{episode}: {len(measured)} epochs, "
            f"last {percent(measured[-1] if measured else None)}, "
            f"best {percent(max(measured) if measured else None)}"
        )

    def _refresh_ppo(self) -> None:
        if not self.view.is_ppo:
            return
        self.ppo_panel.update(ppo_text(self.view))
        self.returns.data = [r for r in self.view.ppo.mean_returns if r is not None]

    # events and actions -------------------------------------------------------------------

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        """Selecting an environment row shows its slots and accuracy."""
        if event.data_table is not self.envs_table or event.row_key.value is None:
            return
        value = event.row_key.value
        self.selected = None if value == "run" else int(value)
        self._refresh_selected()

    def on_input_changed(self, event: Input.Changed) -> None:
        """Re-filter the event log as the filter text changes."""
        self.query_text = event.value
        self.log_panel.clear()
        self.log_panel.write_lines(
            [line.text for line in self.view.log if matches(line, self.query_text)]
        )

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_focus_filter(self) -> None:
        self.filter_input.focus()

    def action_clear_filter(self) -> None:
        """Clear the event filter and go back to the environment table."""
        self.filter_input.value = ""
        self.envs_table.focus()

    def action_next_env(self) -> None:
        self.envs_table.action_cursor_down()

    def action_previous_env(self) -> None:
        self.envs_table.action_cursor_up()
