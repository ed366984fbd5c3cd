"""A run in optuna-dashboard: each stage's study carries a note saying what was decided and why,
the LR range test carries its figure, and ``tuner dashboard`` serves the storage.

``annotate_stage`` is the pipeline's ``on_decided`` hook as each stage is decided (it never
fails the run): the LR check's decision redraws the range test's figure with the max LR it
chose; ``annotate_run`` fills in what a finished stage lacks (runs from before notes existed, a
note that could not be written, a range test figure drawn before the check decided), and
uploads the range test as an SVG artifact, which the dashboard previews in the study's artifact
list.

The range test's note and the final training's say which optimizer ran them (and with which
loss and metric), read from the run's stored configuration.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import socket
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna

from tuner.config import ConfigError, StudyConfig, from_dict
from tuner.report_data import (
    CHECKED_NAME,
    OPTIMIZER_NAMES,
    RangeTestInfo,
    get_range_test_info,
    training_of,
)
from tuner.stages import STAGES, Decision, Stage, lr_check, lr_range
from tuner.stages.final import FinalDecision
from tuner.stages.lr_check import LRDecision
from tuner.stages.lr_range import RangeDecision
from tuner.storage import (
    NoSuchRun,
    Run,
    StorageError,
    mask_url,
    open_storage,
    read_decision,
    run_names,
    storage_folder,
    stored_config,
    study_name,
)
from tuner.version import __version__

if TYPE_CHECKING:
    from optuna.artifacts._protocol import ArtifactStore

log = logging.getLogger(__name__)

RANGE_FIGURE_ID = "lr_range_test"  # the plotly figure's id in the dashboard
RANGE_ARTIFACT = "lr_range_test.svg"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
RANGE_FIGURE_NOTE = ("The figure on this page: training (blue) and validation (orange) loss "
                     "against LR, the range read off it shaded, the max LR the LR check chose "
                     "(stage 1b) a red line once it has, the suggestions dashed, a cross where "
                     "the test stopped early; `tuner report` draws it with a legend.")


# --- notes and figures ----------------------------------------------------------------------

def trained_with(decision: Decision, config: StudyConfig | None) -> str | None:
    """Which optimizer ran the range test or the final training (with the loss and the metric
    where the run's configuration is known); None for the other stages."""
    if isinstance(decision, FinalDecision):
        if config is None:
            return f"{OPTIMIZER_NAMES.get(decision.optimizer, decision.optimizer)} (1cycle)"
        t = dataclasses.replace(training_of(config), optimizer=decision.optimizer,
                                metric=decision.metric_name)
        return f"{t.describe()} (1cycle); loss {t.loss_name}; metric {t.metric or 'none'}"
    if isinstance(decision, RangeDecision) and config is not None:
        t = training_of(config)
        return (f"{t.describe(config.lr_range.momentum)} (constant during the test); loss "
                f"{t.loss_name}")
    return None


def stage_note(stage: Stage, decision: Decision, config: StudyConfig | None = None) -> str:
    """The note of a decided stage (Markdown): what was decided, why, and how long it took;
    for the range test and the final training, which optimizer ran (``config``: the run's)."""
    lines = [f"### {stage.title}", "", f"**Decided:** {decision.summary()}", "",
             f"**Why:** {decision.why}"]
    ran = trained_with(decision, config)
    if ran is not None:
        lines += ["", f"**Trained with:** {ran}"]
    details = getattr(decision, "details", None)  # what a record adds (the range test's)
    if callable(details):
        lines += ["", details()]
    if isinstance(decision, RangeDecision):
        lines += ["", RANGE_FIGURE_NOTE]
    lines += ["", f"*{decision.seconds:.1f} s; note written by tuner {__version__}.*"]
    return "\n".join(lines)


def run_config(study: optuna.Study) -> StudyConfig | None:
    """The configuration of the run ``study`` belongs to (None: none stored)."""
    stored = stored_config(study._storage, study.study_name.rpartition("/")[0])  # noqa: SLF001
    return from_dict(StudyConfig, stored) if stored else None


def write_stage_note(study: optuna.Study, stage: Stage, decision: Decision) -> None:
    from optuna_dashboard import save_note

    save_note(study, stage_note(stage, decision, run_config(study)))


def has_note(study: optuna.Study) -> bool:
    from optuna_dashboard import get_note

    return bool(get_note(study).strip())


def _sibling(study: optuna.Study, stage: Stage) -> optuna.Study | None:
    """The study of ``stage`` in the run ``study`` belongs to (None: not created yet)."""
    name = study_name(study.study_name.rpartition("/")[0], stage.name)
    try:
        return optuna.load_study(study_name=name, storage=study._storage)  # noqa: SLF001
    except KeyError:
        return None


def checked_lr(study: optuna.Study) -> LRDecision | None:
    """The LR check's decision in the run ``study`` belongs to (None: not decided yet)."""
    check = _sibling(study, lr_check.STAGE)
    decision = read_decision(lr_check.STAGE, check) if check is not None else None
    return decision if isinstance(decision, LRDecision) else None


def range_info(study: optuna.Study) -> RangeTestInfo | None:
    """The range test of a ``lr_range`` study, with the max LR the run's LR check chose."""
    return get_range_test_info(study, checked=checked_lr(study))


def attach_range_figure(study: optuna.Study) -> bool:
    """Save the range test figure with the study (the dashboard draws it on the study's page),
    the checked max LR marked once the LR check has decided.

    Returns False when the study holds no range test yet.
    """
    from optuna_dashboard import save_plotly_graph_object

    from tuner.report import range_test_figure

    info = range_info(study)
    if info is None:
        return False
    fig = range_test_figure(info)
    # The dashboard draws it in a small card: no room for the legend, the note explains.
    fig.update_layout(showlegend=False)
    save_plotly_graph_object(study, fig, graph_object_id=RANGE_FIGURE_ID)
    return True


def _system_attrs(study: optuna.Study) -> dict[str, Any]:
    """Where optuna-dashboard keeps notes, figures and artifact records (Optuna 4 deprecated,
    and 5 removed, ``Study.system_attrs``; the dashboard still reads them from storage)."""
    return study._storage.get_study_system_attrs(study._study_id)  # noqa: SLF001


def _range_figure_json(study: optuna.Study) -> str:
    """The stored range test figure, as optuna-dashboard stores it in chunks ("": none)."""
    prefix = f"dashboard:plot_data:{RANGE_FIGURE_ID}:"
    chunks = {int(k[len(prefix):]): v for k, v in _system_attrs(study).items()
              if k.startswith(prefix) and k[len(prefix):].isdigit()}
    return "".join(chunks[i] for i in sorted(chunks))


def has_range_figure(study: optuna.Study, checked: bool = False) -> bool:
    """Whether the study holds the range test figure (``checked``: one that marks the LR
    check's max LR)."""
    stored = _range_figure_json(study)
    return bool(stored) and (not checked or CHECKED_NAME in stored)


def study_artifacts(study: optuna.Study) -> list[dict[str, Any]]:
    """The artifacts uploaded to the study itself (not to its trials)."""
    return [json.loads(v) for k, v in _system_attrs(study).items()
            if k.startswith("artifacts:") and v]


def upload_range_artifact(study: optuna.Study, artifact_store: ArtifactStore) -> str | None:
    """Upload the range test as an SVG image artifact of the study; its id, or None when the
    study holds no range test."""
    from optuna.artifacts import upload_artifact

    from tuner.report_svg import range_test_svg

    info = range_info(study)
    if info is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / RANGE_ARTIFACT
        path.write_text(range_test_svg(info), encoding="utf-8")
        return upload_artifact(artifact_store=artifact_store, file_path=str(path),
                               study_or_trial=study, mimetype="image/svg+xml")


def annotate_stage(stage: Stage, study: optuna.Study, decision: Decision) -> None:
    """What the pipeline calls as a stage is decided: write the stage's dashboard note and, for
    the range test, its figure (redrawn when the LR check decides, to mark its max LR).

    Never raises: a note that cannot be written is logged and left to ``tuner dashboard``.
    """
    try:
        write_stage_note(study, stage, decision)
        if isinstance(decision, RangeDecision):
            attach_range_figure(study)
        elif isinstance(decision, LRDecision):
            range_study = _sibling(study, lr_range.STAGE)
            if range_study is not None:
                attach_range_figure(range_study)
    except Exception as exc:  # noqa: BLE001 -- a note is never worth a failed run
        log.warning("could not write the dashboard note of %s (%s: %s); `tuner dashboard` "
                    "writes it later", study.study_name, type(exc).__name__, exc)


def annotate_run(run: Run, artifact_store: ArtifactStore | None = None) -> list[str]:
    """Write what the run's decided stages lack: the note, the range test figure and (with an
    artifact store) its SVG artifact. Returns what was written, e.g. ``["momentum note"]``."""
    written = []
    studies = run.studies()
    for stage in STAGES:
        study = studies.get(stage.name)
        decision = read_decision(stage, study) if study is not None else None
        if study is None or decision is None:
            continue
        if not has_note(study):
            write_stage_note(study, stage, decision)
            written.append(f"{stage.name} note")
        if isinstance(decision, RangeDecision):
            written += [f"{stage.name} {w}" for w in _range_figures(study, artifact_store)]
    if written:
        log.info("run %r: wrote %s", run.name, ", ".join(written))
    return written


def _range_figures(study: optuna.Study, artifact_store: ArtifactStore | None) -> list[str]:
    """The range test's figure and artifact, where the study lacks them (a figure drawn before
    the LR check decided is redrawn with its max LR)."""
    written = []
    checked = checked_lr(study) is not None
    if not has_range_figure(study, checked) and attach_range_figure(study):
        written.append("figure")
    if artifact_store is not None and not any(
            a.get("filename") == RANGE_ARTIFACT for a in study_artifacts(study)):
        if upload_range_artifact(study, artifact_store) is not None:
            written.append("artifact")
    return written


def annotate_storage(storage: optuna.storages.RDBStorage, url: str,
                     artifact_store: ArtifactStore | None = None) -> list[str]:
    """``annotate_run`` on every run in the storage; a run this tuner cannot read (another
    version's) is left as it is, with a warning."""
    written = []
    for name in run_names(storage):
        run = Run(storage, mask_url(url), name)
        try:
            run.check_schema()
            written += [f"{name}: {w}" for w in annotate_run(run, artifact_store)]
        except (ConfigError, StorageError) as exc:
            log.warning("run %r: no notes written (%s)", name, exc)
    return written


# --- serving --------------------------------------------------------------------------------

def default_artifact_dir(url: str) -> Path:
    """``artifacts/`` beside a SQLite file, else under the working directory."""
    return storage_folder(url) / "artifacts"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 -- the base's name
        log.debug("dashboard: " + format, *args)


def make_dashboard_server(url: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                          artifact_dir: str | Path | None = None) -> WSGIServer:
    """Annotate every run in the storage (a SQLite file that does not exist is an error, never
    created), then bind optuna-dashboard to ``host:port`` (port 0: any free port). Call
    ``serve_forever()`` on the result."""
    import optuna_dashboard
    from optuna.artifacts import FileSystemArtifactStore

    storage = open_storage(url, create=False)
    if not run_names(storage):
        raise NoSuchRun(f"storage {mask_url(url)!r} holds no tuner run; start one with "
                        f"`tuner run`.")
    directory = Path(artifact_dir) if artifact_dir is not None else default_artifact_dir(url)
    directory.mkdir(parents=True, exist_ok=True)
    store = FileSystemArtifactStore(str(directory))
    annotate_storage(storage, url, store)
    if not is_loopback(host):
        log.warning("the dashboard listens on %s: anyone who can reach it can read and change "
                    "the studies (it has no login)", host)
    server_class = WSGIServer
    if ":" in host:
        server_class = type("WSGIServer6", (WSGIServer,), {"address_family": socket.AF_INET6})
    return make_server(host, port, optuna_dashboard.wsgi(storage, artifact_store=store),
                       server_class=server_class, handler_class=_QuietHandler)


def dashboard_url(server: WSGIServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{f'[{host}]' if ':' in str(host) else host}:{port}/dashboard"
