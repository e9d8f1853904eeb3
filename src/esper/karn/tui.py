"""The live terminal UI (Textual): follow a run as it trains, or replay a finished one.

The app reads a run directory's ``events.jsonl`` as typed events (``esper.nissa.log.EventTail``)
and folds them into one ``esper.nissa.fold.RunState`` — the fold every view shares, resumes
included. It starts from the state of the events already there (a finished run is replayed
whole), then polls for new ones every ``POLL_SECONDS``. A malformed line found while following
(bad JSON, an unknown event, a field of the wrong type) stops the following and shows the error
instead of crashing. ``esper.karn.tui_state`` turns the state into text; this module lays it out.
``HELP_TEXT`` (the ``?`` screen) describes each panel; the highlighted row of the environment
table selects the environment the slot panel and the accuracy sparkline show (for PPO, the
episode being played: each episode starts a new history).

Layout: the run summary across the top; below it the environment table, the slot panel and the
accuracy sparkline, with the PPO panel (PPO runs) in a scrolling column on the right; the event
log takes the rest of the height. Panels are sized in ``auto``, ``fr`` and ``vh`` units so the
whole screen stays readable from 100×30 (the event log keeps its rows; the tables keep every
column) and a larger terminal gives the extra room to the tables and the log.
"""

from __future__ import annotations

import asyncio
import math
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Self

from rich.text import Text
from textual import events
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Header, Input, Label, Log, Sparkline, Static

from esper.karn.tui_state import (
    ENV_HEADINGS,
    LOG_LINES,
    PPO_LABEL_WIDTH,
    accuracies,
    env_cells,
    log_text,
    matches,
    mean_returns,
    ppo_text,
    summary_lines,
)
from esper.leyline.events import SlotSnapshot
from esper.leyline.stages import SeedStage
from esper.nissa.console import detach_from_hung_up_terminal
from esper.nissa.fold import RunState, fold_to_end
from esper.nissa.log import EventLogError, EventTail, Logged, RunDirectory, display, percent
from esper.nissa.record import RunRecordError, read_summary, run_is_held

POLL_SECONDS = 0.5
"""How often a followed event log is polled: quick enough to feel live, cheap when idle."""

READ_BYTES = 1 << 20
"""How much of the log one read takes at most (about 3,000 lines): a long log is folded piece by
piece, so reading it holds the fold's state and one piece, never the whole log, and the UI draws
between pieces."""

QUIET_SECONDS = 10.0
"""How long a followed run may log nothing before the UI looks (at most this often) whether a
process still holds its lock (``run_is_held``): a killed run said "following (live)" for
good."""

STALLED_SECONDS = 5.0
"""A last line left without its newline this long is reported: the writer flushes whole lines
in one write, so a partial line that stays is a run that died while writing it."""

PPO_WIDTH = PPO_LABEL_WIDTH + 14
"""The PPO column's width: its labels, a value such as "-1.234e-05" and room for the scrollbar."""

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

SLOT_COLUMNS: tuple[tuple[str, str, Callable[[SlotSnapshot], str | Text]], ...] = (
    ("slot", "slot", lambda s: s.slot),
    ("stage", "stage", lambda s: Text(s.stage, style=_STYLES[s.stage])),  # the full name
    ("blueprint", "blueprint", lambda s: display(s.blueprint)),
    ("alpha", "α", lambda s: display(s.alpha, ".2f")),
    ("contribution", "contrib", lambda s: display(s.contribution, "+.2f")),
    ("shapley", "shapley", lambda s: display(s.shapley, "+.2f")),
    ("seed_params", "params", lambda s: display(s.seed_params, ",d")),  # as the env table
)
"""Slot panel: column key, heading and cell (headings kept short so every column fits beside the
PPO column at 100 columns; ``HELP_TEXT`` spells them out). The reader only accepts known stage
names, so every stage has its colour."""

HELP_TEXT = f"""\
esper tui — keys

  q         quit, as Ctrl-C, SIGTERM and SIGHUP do (a run started with
            --tui is interrupted: it checkpoints and can be resumed)
  ?         this help (escape, q or ? closes it)
  /         filter the event log: lines containing the text (any case)
  escape    clear the filter and go back to the environment table
  n / p     next / previous environment (or ↑ ↓ in the environment table)

Panels
  summary   mode, task, seed, status; epoch (PPO: round, env steps) and
            the result once the run has ended
  envs      each environment's latest epoch: episode, epoch, val accuracy,
            val loss, params
  slots     the selected environment's slots at its latest epoch: stage,
            blueprint, α, contrib (counterfactual contribution) and
            shapley (Shapley value), both in accuracy points; seed params
  accuracy  val accuracy per epoch of the selected environment's episode
  PPO       mean return per round; anomaly and ratio-explosion counts;
            every statistic of the latest round's update (scroll it)
  events    one line per event (the last {LOG_LINES} are kept); "—" marks a
            value that was not measured
"""


def env_row_key(key: int | None) -> str:
    """The environment table's row key of environment ``key``."""
    return "run" if key is None else str(key)


def slot_cells(snapshot: SlotSnapshot) -> tuple[Text, ...]:
    """One slot's row, in ``SLOT_COLUMNS`` order, as text that is never read as markup (a
    table reads a plain string as Rich markup: a slot named "[/]" crashed the UI)."""
    return tuple(_text(cell(snapshot)) for _, _, cell in SLOT_COLUMNS)


def _text(cell: str | Text) -> Text:
    return cell if isinstance(cell, Text) else Text(cell)


def drawable(values: list[float]) -> list[float]:
    """``values`` for a sparkline, which draws their shape: the finite ones, halved when their
    range overflows a float (a sparkline of 1.7e308 and -1.7e308 divided by inf)."""
    finite = [v for v in values if math.isfinite(v)]
    if finite and not math.isfinite(max(finite) - min(finite)):
        return [v / 2 for v in finite]
    return finite


def catch_up(tail: EventTail) -> RunState:
    """Fold every complete event the log holds now (``READ_BYTES`` at a time) into a fresh
    state keeping ``LOG_LINES`` events.

    Raises:
        EventLogError: a malformed line (the events before it are folded first).
    """
    return fold_to_end(RunState(LOG_LINES), tail, READ_BYTES)


class FollowingLog(Log):
    """Textual's ``Log``, kept at its newest line until the reader scrolls back from it, and
    again once they are back at the end. ``Log`` follows only from the end it is at, and a log
    that got shorter (the tables above it filled in, the terminal shrank) was no longer at its
    end: it stayed on an old line for good (at 80×20, on ``RunStarted``)."""

    following = True
    """Whether the reader is at the newest line (has not scrolled back from it)."""

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        self.following = self.is_vertical_scroll_end  # a log getting shorter moves nothing

    def write_lines(self, lines: Iterable[str], scroll_end: bool | None = None) -> Self:
        super().write_lines(lines, scroll_end=False)
        if scroll_end or (scroll_end is None and self.following):
            self.scroll_end(animate=False, x_axis=False)
        return self

    def on_resize(self, event: events.Resize) -> None:
        if self.following:
            self.scroll_end(animate=False, x_axis=False)


class HelpScreen(ModalScreen[None]):
    """The keyboard help, over the main screen."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss", "Close"),
        Binding("q", "dismiss", "Close", show=False),
        Binding("question_mark", "dismiss", "Close", show=False),
    ]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll { width: auto; max-width: 100%; height: auto; max-height: 100%;
                                  border: round $accent; background: $surface; }
    HelpScreen Static { width: auto; padding: 0 1; }
    """

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(HELP_TEXT, id="help", markup=False)


class RunApp(App[None]):
    """The terminal UI of one run.

    Args:
        run: the run directory (already validated with ``open_run``).
        tail: the event log's tail, positioned after the events ``state`` holds.
        state: the events already read, folded (``catch_up``); None: a fresh state, and the
            first poll reads the log.
        poll_seconds: how often to poll ``tail`` for new events.
        exit_code: for a run this process started (``--tui``): returns the child's exit code
            once it has exited, else None; the status line reports it.
        stalled_seconds: how long a partial last line may stay before it is reported.
        quiet_seconds: ``QUIET_SECONDS``.
    """

    TITLE = "esper"
    CSS = f"""
    .heading {{ text-style: bold; color: $accent; width: 100%; }}
    #run {{ height: auto; padding: 0 1; background: $boost; }}
    /* The panels take at most 55% of the height: at 30 rows the event log keeps 7 lines; at
       50 rows every PPO statistic fits. A column that is cut scrolls. */
    #top {{ height: auto; max-height: 55vh; }}
    #left {{ width: 1fr; height: auto; max-height: 55vh; overflow-y: auto; }}
    #top.ppo #left {{ height: 100%; }}
    #right {{ width: {PPO_WIDTH}; height: auto; max-height: 55vh; padding: 0 0 0 1; }}
    /* A table of many environments (or slots) scrolls instead of pushing the rest away. */
    #envs {{ height: auto; max-height: 25vh; }}
    #slots {{ height: auto; max-height: 25vh; }}
    /* The accuracy sparkline grows with the screen; beside the PPO column it fills the rows
       the column's height leaves free. */
    #accuracy {{ height: 10vh; min-height: 2; }}
    #top.ppo #accuracy {{ height: 1fr; min-height: 2; }}
    #returns {{ height: 2; }}
    #error {{ color: $error; text-style: bold; display: none; }}
    #error.shown {{ display: block; }}
    #filter {{ padding: 0 1; }}
    #log {{ height: 1fr; min-height: 3; border-top: solid $accent; }}
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("ctrl+c", "quit", "Quit", show=False),
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
        state: RunState | None = None,
        *,
        poll_seconds: float = POLL_SECONDS,
        exit_code: Callable[[], int | None] | None = None,
        stalled_seconds: float = STALLED_SECONDS,
        quiet_seconds: float = QUIET_SECONDS,
    ) -> None:
        super().__init__()
        self.run_directory = run
        self.tail = tail
        self.state = RunState(LOG_LINES) if state is None else state
        # The kept events' log lines, formatted once (the filter runs over them per keystroke).
        self.lines: deque[str] = deque(map(log_text, self.state.recent), maxlen=LOG_LINES)
        self.selected: int | None = None
        self.query_text = ""
        self.error: str | None = None
        self.child_code: int | None = None
        self._poll_seconds = poll_seconds
        self._stalled_seconds = stalled_seconds
        self._partial_since: float | None = None  # when the current partial last line appeared
        self._shown_stalled = False  # whether the status on screen reports a stalled line
        self._quiet_seconds = quiet_seconds
        self._read_at = self._looked_at = time.monotonic()  # last events read; last look
        self.unheld = False  # quiet, and no process holds the run's lock
        self._exit_code = exit_code
        self._timer: Timer | None = None
        self._signals: dict[int, Any] = {}  # signal -> the handler before the UI's
        self.title = f"esper tui — {run.name}"
        # The panels, kept by reference: a timer tick must reach them while the help is open.
        self.run_panel = Static("", id="run", markup=False)
        self.envs_table: DataTable[str] = DataTable(id="envs", cursor_type="row")
        self.slots_title = Label("Slots", id="slots-title", classes="heading")
        self.slots_table: DataTable[Text] = DataTable(
            id="slots", cursor_type="none", show_cursor=False
        )
        self.accuracy_title = Label("Val accuracy", id="accuracy-title", classes="heading")
        self.accuracy = Sparkline([], id="accuracy")
        self.ppo_title = Label("PPO: mean return per round", id="ppo-title", classes="heading")
        self.returns = Sparkline([], id="returns")
        self.ppo_panel = Static("", id="ppo", markup=False)
        self.error_line = Static("", id="error", markup=False)
        self.filter_input = Input(
            placeholder="/ filter events (escape clears)", id="filter", compact=True
        )
        self.log_panel = FollowingLog(id="log", max_lines=LOG_LINES)

    def compose(self) -> ComposeResult:
        yield Header()
        yield self.run_panel
        with Horizontal(id="top"):
            with Vertical(id="left"):
                yield Label("Environments", classes="heading")
                yield self.envs_table
                yield self.slots_title
                yield self.slots_table
                yield self.accuracy_title
                yield self.accuracy
            with VerticalScroll(id="right"):
                yield self.ppo_title
                yield self.returns
                yield self.ppo_panel
        yield self.error_line
        yield self.filter_input
        yield self.log_panel
        yield Footer()

    def on_mount(self) -> None:
        for key, heading in ENV_HEADINGS:
            self.envs_table.add_column(heading, key=key)
        for key, heading, _ in SLOT_COLUMNS:
            self.slots_table.add_column(heading, key=key)
        self._refilter()
        self._refresh()
        self.envs_table.focus()
        self._timer = self.set_interval(self._poll_seconds, self.poll)
        self._catch_signals()

    def _catch_signals(self) -> None:
        """SIGTERM and SIGHUP quit the UI as ``q`` does: they killed it, leaving the terminal
        in the UI's screen (and a ``--tui`` run orphaned). The handlers before are put back
        when the UI ends."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGHUP):
            previous = signal.getsignal(signum)
            if previous is signal.SIG_IGN or previous is None:
                continue  # nohup's ignore stays; a handler set from C could not be put back
            try:
                loop.add_signal_handler(signum, self._quit_on_signal, signum)
            except (RuntimeError, ValueError):  # not the main thread: nothing to catch here
                return
            self._signals[signum] = previous

    def _quit_on_signal(self, signum: int) -> None:
        if signum == signal.SIGHUP:  # the terminal may be gone: what follows must not fail
            detach_from_hung_up_terminal()
        self.exit()

    def on_unmount(self) -> None:
        loop = asyncio.get_running_loop()
        for signum, previous in self._signals.items():
            loop.remove_signal_handler(signum)
            signal.signal(signum, previous)
        self._signals.clear()

    # following ----------------------------------------------------------------------------

    def poll(self) -> None:
        """Read what the log gained since the last poll (and whether the child exited)."""
        if self.error is not None:
            return
        if self._exit_code is not None and self.child_code is None:
            self.child_code = self._exit_code()  # before reading, so its last lines are read
        try:
            items = self.tail.events(READ_BYTES)
        except (EventLogError, OSError) as err:
            self.stop_following(str(err))
            return
        if items or not self.tail.partial:
            self._partial_since = None
        elif self._partial_since is None:
            self._partial_since = time.monotonic()
        if items:
            self._read_at, self.unheld = time.monotonic(), False
        else:
            self._look_for_holder()
        if items or self.child_code is not None:
            self.ingest(items)
        elif self.stalled != self._shown_stalled:
            self._refresh_status()
        if not self.tail.caught_up or self.tail.error is not None:
            self.call_later(self.poll)  # read on (or report the error) once this is drawn

    def _look_for_holder(self) -> None:
        """After ``quiet_seconds`` without an event, whether a process still runs the run (holds
        its lock; ``esper tui`` only: ``--tui`` knows its child, a finished run runs no more)."""
        now = time.monotonic()
        if self._exit_code is not None or self.state.status is not None:
            return
        if min(now - self._read_at, now - self._looked_at) < self._quiet_seconds:
            return
        self._looked_at = now
        unheld = run_is_held(self.run_directory.path) is False
        if unheld != self.unheld:
            self.unheld = unheld
            self._refresh_status()

    @property
    def stalled(self) -> bool:
        """Whether the log has ended in a partial line for ``stalled_seconds`` (a crash)."""
        since = self._partial_since
        return since is not None and time.monotonic() - since >= self._stalled_seconds

    def ingest(self, items: list[Logged]) -> None:
        """Fold ``items`` into the state and update every panel once."""
        self.state.apply_all(items)
        texts = [log_text(item) for item in items[-LOG_LINES:]]
        self.lines.extend(texts)
        shown = [text for text in texts if matches(text, self.query_text)]
        if shown:
            self.log_panel.write_lines(shown)
        if items:
            self._refresh()
        else:
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
        if self.state.status is not None:
            state = f"finished ({self.state.status})"
        elif self.child_code is not None:
            state = "stopped without an end record"
        elif self.stalled and (ended := self._recorded_status()) is not None:
            state = f"finished ({ended}; the log's last line is cut off)"  # as its summary says
        elif self.stalled:
            state = "following — the last line is incomplete (did the run crash while writing?)"
        elif self.unheld:
            state = "following — quiet, and no process holds the run (killed?)"
        else:
            state = "following (live)"
        if self.child_code is not None:
            state += f", exit code {self.child_code}"
        return state

    def _recorded_status(self) -> str | None:
        """The status in the run's ``summary.json``; None where it has none or it cannot be
        read (a finished run whose log ends in a cut line read "following" for ever)."""
        try:
            summary = read_summary(self.run_directory.path)
        except RunRecordError:
            return None
        return None if summary is None else summary.status

    def _refresh(self) -> None:
        """Every panel, from the state."""
        if self.selected not in self.state.envs:
            keys = self.state.env_keys()
            self.selected = keys[0] if keys else None
        self.query_one("#top").set_class(self.state.is_ppo, "ppo")
        self.query_one("#right").display = self.state.is_ppo
        self._refresh_envs()
        self._refresh_selected()
        self._refresh_ppo()
        self._refresh_status()

    def _refresh_status(self) -> None:
        self._shown_stalled = self.stalled
        self.sub_title = self.status_text()
        self.run_panel.update("\n".join(summary_lines(self.state, self.sub_title)))

    def _refresh_envs(self) -> None:
        table, state = self.envs_table, self.state
        keys = state.env_keys()
        if [row.key.value for row in table.ordered_rows] != [env_row_key(k) for k in keys]:
            table.clear()
            for key in keys:
                table.add_row(*env_cells(state.envs[key]), key=env_row_key(key))
            if self.selected in keys:
                table.move_cursor(row=keys.index(self.selected))
            return
        for key in keys:
            cells = env_cells(state.envs[key])
            for (column, _), value in zip(ENV_HEADINGS, cells, strict=True):
                table.update_cell(env_row_key(key), column, value)

    def _refresh_selected(self) -> None:
        """The slot panel and the accuracy sparkline of the selected environment."""
        self.slots_table.clear()
        if self.selected not in self.state.envs:
            self.accuracy.data = []
            return
        env = self.state.envs[self.selected]
        where = "" if env.env is None else f" (env {env.env})"
        self.slots_title.update(f"Slots{where}")
        latest = env.latest
        for snapshot in () if latest is None else latest.slots:
            self.slots_table.add_row(*slot_cells(snapshot))  # no key: names may repeat
        measured = accuracies(env.episode)
        self.accuracy.data = drawable(measured)
        number = None if env.episode is None else env.episode.number
        if number is not None:
            where = f" (env {env.env}, episode {number})"
        self.accuracy_title.update(
            f"Val acc{where}: last {percent(measured[-1] if measured else None)}, "
            f"best {percent(None if env.episode is None else env.episode.best_val_accuracy())}, "
            f"{len(measured)} epochs"
        )

    def _refresh_ppo(self) -> None:
        if not self.state.is_ppo:
            return
        self.returns.data = drawable(mean_returns(self.state))
        self.ppo_panel.update(ppo_text(self.state))

    # events and actions -------------------------------------------------------------------

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        """Selecting an environment row shows its slots and accuracy."""
        if event.data_table is not self.envs_table or event.row_key is None:
            return  # p, up or page-down before the first epoch: no row to show
        if event.row_key.value is None:
            return
        value = event.row_key.value
        self.selected = None if value == "run" else int(value)
        self._refresh_selected()

    def on_input_changed(self, event: Input.Changed) -> None:
        """Re-filter the event log as the filter text changes."""
        self.query_text = event.value
        self._refilter()

    def _refilter(self) -> None:
        """The log panel: the kept lines that pass the filter."""
        self.log_panel.clear()
        self.log_panel.write_lines([text for text in self.lines if matches(text, self.query_text)])

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
