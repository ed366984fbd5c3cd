"""A run in optuna-dashboard: each stage's study carries a note saying what was decided and why,
the LR range test carries its figure, and ``tuner dashboard`` serves the storage.

``annotate_stage`` is called by the pipeline as each stage finishes (and never fails it);
``annotate_run`` fills in what a finished stage lacks (runs from before notes existed, or a
note that could not be written), and uploads the range test as an SVG artifact, which the
dashboard previews in the study's artifact list.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna

from tuner.report_data import (
    ENVIRONMENT_ATTR,
    STAGE_TITLES,
    SUGGESTION_NAMES,
    NoSuchRun,
    decision_text,
    environment,
    get_range_test_info,
    load_stage_studies,
    open_existing_storage,
)
from tuner.storage import get_decision, mask_url, run_names, storage_folder
from tuner.version import __version__

if TYPE_CHECKING:
    import torch
    from optuna.artifacts._protocol import ArtifactStore

log = logging.getLogger(__name__)

RANGE_FIGURE_ID = "lr_range_test"  # the plotly figure's id in the dashboard
RANGE_ARTIFACT = "lr_range_test.svg"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


# --- notes and figures ----------------------------------------------------------------------

def stage_note(stage: str, decision: dict[str, Any]) -> str:
    """The note of a finished stage (Markdown): what was decided, why, and how long it took."""
    lines = [f"### {STAGE_TITLES.get(stage, stage)}", "",
             f"**Decided:** {decision_text(stage, decision)}", "",
             f"**Why:** {decision.get('why', '')}"]
    if stage == "lr_range":
        rules = ", ".join(f"{SUGGESTION_NAMES.get(k, k)} {v:.3g}"
                          for k, v in decision.get("suggestions", {}).items())
        lines += ["", f"Range test stopped: {decision.get('stop_reason', '?')}. "
                      f"fastai's suggestions on the training loss (for comparison): {rules}.",
                  "", "The figure on this page: training (blue) and validation (orange) loss "
                      "against LR, the chosen range shaded, the suggestions dashed, a cross "
                      "where the test stopped early; `tuner report` draws it with a legend."]
    if "seconds" in decision:
        lines += ["", f"*{decision['seconds']:.1f} s; note written by tuner {__version__}.*"]
    return "\n".join(lines)


def write_stage_note(study: optuna.Study, stage: str, decision: dict[str, Any]) -> None:
    from optuna_dashboard import save_note

    save_note(study, stage_note(stage, decision))


def has_note(study: optuna.Study) -> bool:
    from optuna_dashboard import get_note

    return bool(get_note(study).strip())


def attach_range_figure(study: optuna.Study) -> bool:
    """Save the range test figure with the study (the dashboard draws it on the study's page).

    Returns False when the study holds no range test yet.
    """
    from optuna_dashboard import save_plotly_graph_object

    from tuner.report import range_test_figure

    info = get_range_test_info(study)
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


def has_range_figure(study: optuna.Study) -> bool:
    prefix = f"dashboard:plot_data:{RANGE_FIGURE_ID}:"
    return any(k.startswith(prefix) for k in _system_attrs(study))


def study_artifacts(study: optuna.Study) -> list[dict[str, Any]]:
    """The artifacts uploaded to the study itself (not to its trials)."""
    return [json.loads(v) for k, v in _system_attrs(study).items()
            if k.startswith("artifacts:") and v]


def upload_range_artifact(study: optuna.Study, artifact_store: ArtifactStore) -> str | None:
    """Upload the range test as an SVG image artifact of the study; its id, or None when the
    study holds no range test."""
    from optuna.artifacts import upload_artifact

    from tuner.report_svg import range_test_svg

    info = get_range_test_info(study)
    if info is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / RANGE_ARTIFACT
        path.write_text(range_test_svg(info), encoding="utf-8")
        return upload_artifact(artifact_store=artifact_store, file_path=str(path),
                               study_or_trial=study, mimetype="image/svg+xml")


def annotate_stage(study: optuna.Study, stage: str, decision: dict[str, Any],
                   device: torch.device | str | None = None) -> None:
    """What the pipeline calls as a stage finishes: record the environment it ran in, write
    the stage's dashboard note and, for the range test, its figure.

    Never raises: a note that cannot be written is logged and left to ``tuner dashboard``.
    """
    try:
        study.set_user_attr(ENVIRONMENT_ATTR, environment(device))
        write_stage_note(study, stage, decision)
        if stage == "lr_range":
            attach_range_figure(study)
    except Exception as exc:  # noqa: BLE001 -- a note is never worth a failed run
        log.warning("could not write the dashboard note of %s (%s: %s); `tuner dashboard` "
                    "writes it later", study.study_name, type(exc).__name__, exc)


def annotate_run(storage: optuna.storages.BaseStorage, run: str,
                 artifact_store: ArtifactStore | None = None) -> list[str]:
    """Write what the run's finished stages lack: the note, the range test figure and (with an
    artifact store) its SVG artifact. Returns what was written, e.g. ``["momentum note"]``."""
    written = []
    for stage, study in load_stage_studies(storage, run).items():
        decision = get_decision(study)
        if decision is None:
            continue
        if not has_note(study):
            write_stage_note(study, stage, decision)
            written.append(f"{stage} note")
        if stage != "lr_range":
            continue
        if not has_range_figure(study) and attach_range_figure(study):
            written.append(f"{stage} figure")
        if artifact_store is not None and not any(
                a.get("filename") == RANGE_ARTIFACT for a in study_artifacts(study)):
            if upload_range_artifact(study, artifact_store) is not None:
                written.append(f"{stage} artifact")
    if written:
        log.info("run %r: wrote %s", run, ", ".join(written))
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
    """Annotate every run in the storage, then bind optuna-dashboard to ``host:port`` (port 0:
    any free port). Call ``serve_forever()`` on the result."""
    import optuna_dashboard
    from optuna.artifacts import FileSystemArtifactStore

    storage = open_existing_storage(url)
    runs = run_names(storage)
    if not runs:
        raise NoSuchRun(f"storage {mask_url(url)!r} holds no tuner run; start one with "
                        f"`tuner run`.")
    directory = Path(artifact_dir) if artifact_dir is not None else default_artifact_dir(url)
    directory.mkdir(parents=True, exist_ok=True)
    store = FileSystemArtifactStore(str(directory))
    for run in runs:
        annotate_run(storage, run, store)
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


def serve(url: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          artifact_dir: str | Path | None = None) -> None:
    """Serve optuna-dashboard on the storage until interrupted."""
    server = make_dashboard_server(url, host, port, artifact_dir)
    log.info("optuna-dashboard on %s: %s", mask_url(url), dashboard_url(server))
    try:
        server.serve_forever()
    finally:
        server.server_close()
