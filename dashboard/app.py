"""The Dash app: ``create_app(runs_root)`` builds it, ``serve(runs_root)`` runs it.

Nothing is read when this module is imported or the app is created; torch is
never imported (runs are read from their SQLite stores).
"""
from __future__ import annotations

import os
from functools import wraps
from pathlib import Path

import dash
import flask
from dash import ALL, ClientsideFunction, Dash, Input, Output, State

from . import analysis
from . import callbacks
from . import compare
from . import details
from . import ids
from . import incidents
from . import notes
from . import spread_view
from .data import DataSource
from .graph_view import ELEMENTS_ROUTE
from .layout import build_layout, deferred, validation_layout

ASSETS = Path(__file__).with_name("assets")


def _triggered() -> set[str]:
    return {str(k).rsplit(".", 1)[0] for k in (dash.ctx.triggered_prop_ids or {})}


def _trigger() -> str | None:
    return dash.ctx.triggered_id if isinstance(dash.ctx.triggered_id, str) else None


def create_app(runs_root: str | os.PathLike, *, auto_max_nodes: int | None = None,
               layout_engine: str = "auto") -> Dash:
    """A Dash app browsing the runs under ``runs_root`` (its data source is ``app.gva_source``).

    Args:
        runs_root: directory holding run directories (each with ``rank-<r>.gva.sqlite`` files).
        auto_max_nodes: the first view of a graph shows at most this many boxes, modules folded
            by structure until it fits a laptop screen at a readable zoom (default 60).
        layout_engine: "auto" (dot, then a fast layered layout past 2,000 nodes), "dot" or "layered".
    """
    kwargs = {} if auto_max_nodes is None else {"auto_max_nodes": auto_max_nodes}
    src = DataSource(runs_root, layout_engine=layout_engine, **kwargs)
    app = Dash(__name__, assets_folder=str(ASSETS), title="graphviz-autograd dashboard",
               update_title=None, suppress_callback_exceptions=True, serve_locally=True)
    app.layout = build_layout
    app.validation_layout = validation_layout()
    app.gva_source = src
    register(app, src)

    @app.server.route(ELEMENTS_ROUTE)
    def _elements():
        """The elements of one laid-out scene, by its key (only scenes the app built)."""
        body = src.scene_json(flask.request.args.get("key", ""))
        if body is None:
            return flask.Response('{"error": "unknown graph key"}', status=404,
                                  mimetype="application/json")
        return flask.Response(body, mimetype="application/json",
                              headers={"Cache-Control": "private, max-age=3600"})
    return app


def register(app: Dash, src: DataSource) -> None:
    """Wire every callback of :mod:`dashboard.callbacks` and :mod:`dashboard.analysis` to ``app``."""

    def cb(*deps, with_src=True, trigger=None, **kw):
        def deco(fn):
            @wraps(fn)
            def run(*args):
                extra = []
                if trigger == "one":
                    extra = [_trigger()]
                elif trigger == "all":
                    extra = [_triggered()]
                return fn(*([src] if with_src else []), *extra, *args)
            app.callback(*deps, **kw)(run)
            return fn
        return deco

    latest, step = Input(ids.LATEST, "data"), Input(ids.STEP, "data")
    cb(Output(ids.RUN, "options"), Output(ids.RUN, "value"), Input(ids.LOCATION, "search"),
       Input(ids.INTERVAL, "n_intervals"), State(ids.RUN, "value"), State(ids.RUN, "options"))(callbacks.run_options)
    cb(Output(ids.RANK, "options"), Output(ids.RANK, "value"), Input(ids.RUN, "value"),
       Input(ids.INTERVAL, "n_intervals"), State(ids.RANK, "value"),
       State(ids.RANK, "options"))(callbacks.rank_options)
    cb(Output(ids.LATEST, "data"), Output(ids.STATUS, "children"), Input(ids.RUN, "value"),
       Input(ids.RANK, "value"), Input(ids.INTERVAL, "n_intervals"), State(ids.LATEST, "data"))(callbacks.refresh)
    cb(Output(ids.SKIPPED, "children"), Input(ids.LOCATION, "search"),
       Input(ids.INTERVAL, "n_intervals"))(notes.skipped_note)
    cb(Output(ids.INTERVAL, "disabled"), Input(ids.LIVE, "value"), with_src=False)(callbacks.live_toggle)
    cb(Output(ids.STEP_SLIDER, "min"), Output(ids.STEP_SLIDER, "max"), Output(ids.STEP_SLIDER, "marks"),
       latest, with_src=False)(callbacks.slider_props)
    cb(*[Output(slot, "children") for slot in deferred()], Output(ids.MOUNTED, "data"),
       Input(ids.PAINTED, "data"), Input(ids.MOUNT_TIMER, "n_intervals"), State(ids.MOUNTED, "data"),
       with_src=False, prevent_initial_call=True)(callbacks.mount)
    cb(Output(ids.PICKED, "data"), Input(ids.LOSS, "clickData"), Input(ids.LOSS, "selectedData"),
       Input(ids.METRICS, "clickData"), Input(ids.METRICS, "selectedData"), with_src=False,
       trigger="one", prevent_initial_call=True)(callbacks.pick_step)
    cb(Output(ids.STEP, "data"), Output(ids.STEP_SLIDER, "value"),
       Input(ids.STEP_SLIDER, "value"), Input(ids.PICKED, "data"), latest, State(ids.STEP, "data"),
       State(ids.LOCATION, "search"), with_src=False, trigger="one")(callbacks.select_step)
    cb(Output(ids.STEP_LABEL, "children"), step, latest)(callbacks.step_label)
    cb(Output(ids.LOSS, "figure"), latest, step, trigger="all")(incidents.loss_figure)
    cb(Output(ids.SCALARS, "options"), Output(ids.SCALARS, "value"), latest,
       State(ids.SCALARS, "value"), with_src=False)(callbacks.scalar_options)
    cb(Output(ids.METRICS, "figure"), latest, Input(ids.SCALARS, "value"), step,
       trigger="all")(callbacks.metrics_figure)
    cb(Output(ids.ELEMENTS, "data"), Output(ids.GRAPH, "stylesheet"),
       Output(ids.GRAPH_KEY, "data"), Output(ids.GRAPH_INFO, "children"), Output(ids.COLORS, "data"),
       Output(ids.LEGEND, "children"), latest, step, Input(ids.FOLDED, "data"),
       Input(ids.METRIC, "value"), State(ids.GRAPH_KEY, "data"))(callbacks.graph_update)
    cb(Output(ids.SEARCH_RESULT, "data"), Output(ids.SEARCH_INFO, "children"),
       Input(ids.SEARCH, "value"), Input(ids.SEARCH, "n_submit"), State(ids.GRAPH_KEY, "data"),
       State(ids.SEARCH_RESULT, "data"), prevent_initial_call=True)(callbacks.search)
    cb(Output(ids.SELECTED, "data"), Input(ids.GRAPH, "tapNodeData"), Input(ids.SEARCH_RESULT, "data"),
       Input(ids.RUN, "value"), State(ids.SELECTED, "data"), with_src=False, trigger="one")(callbacks.select_node)
    cb(Output(ids.FOLDED, "data"), Input(ids.FOLD_TOGGLE, "n_clicks"),
       Input(ids.FOLD_ALL, "n_clicks"), Input(ids.UNFOLD_ALL, "n_clicks"), Input(ids.RUN, "value"),
       State(ids.SELECTED, "data"), State(ids.GRAPH_KEY, "data"), State(ids.FOLDED, "data"),
       State(ids.LOCATION, "search"), trigger="one", prevent_initial_call=True)(_fold_adapter)
    cb(Output(ids.DETAIL, "children"), Output(ids.FOLD_TOGGLE, "children"),
       Output(ids.FOLD_TOGGLE, "disabled"), Input(ids.SELECTED, "data"),
       Input(ids.GRAPH_KEY, "data"))(details.node_detail)
    cb(Output(ids.NODE_FIG, "figure"), Input(ids.SELECTED, "data"), Input(ids.GRAPH_KEY, "data"),
       latest, step, trigger="all")(details.node_figure)
    cb(Output(ids.DETAIL_AT_STEP, "children"), Input(ids.SELECTED, "data"), step,
       Input(ids.GRAPH_KEY, "data"), State(ids.LATEST, "data"))(details.node_at_step)
    cb(Output(ids.FLOW, "figure"), latest, step)(analysis.flow_figure)
    cb(Output(ids.HEATMAP, "figure"), latest, step, trigger="all")(analysis.heatmap_figure)
    cb(Output(ids.VERSION_A, "options"), Output(ids.VERSION_A, "value"), Output(ids.VERSION_B, "options"),
       Output(ids.VERSION_B, "value"), latest, State(ids.VERSION_A, "value"),
       State(ids.VERSION_B, "value"), with_src=False)(analysis.version_options)
    cb(Output(ids.DIFF_GRAPH, "elements"), Output(ids.DIFF_GRAPH, "layout"), Output(ids.DIFF_INFO, "children"),
       latest, Input(ids.VERSION_A, "value"), Input(ids.VERSION_B, "value"),
       State(ids.DIFF_GRAPH, "layout"))(analysis.diff_view)
    cb(Output(ids.RANK_A, "options"), Output(ids.RANK_A, "value"), Output(ids.RANK_B, "options"),
       Output(ids.RANK_B, "value"), latest, State(ids.RANK_A, "value"), State(ids.RANK_B, "value"),
       with_src=False)(analysis.rank_options)
    cb(Output(ids.RANK_FIG, "figure"), latest, Input(ids.RANK_A, "value"), Input(ids.RANK_B, "value"),
       Input(ids.RANK_STAT, "value"), step)(analysis.rank_figure)
    cb(Output(ids.RUNS, "options"), Output(ids.RUNS, "value"), Output(ids.COMPARE, "className"),
       Input(ids.LOCATION, "search"), Input(ids.INTERVAL, "n_intervals"), State(ids.RUNS, "value"),
       State(ids.RUNS, "options"))(compare.runs_options)
    cb(Output(ids.CMP_KEY, "options"), Output(ids.CMP_KEY, "value"), Input(ids.RUNS, "value"),
       Input(ids.CMP_KIND, "value"), State(ids.CMP_KEY, "value"))(compare.key_options)
    cb(Output(ids.CMP_FIG, "figure"), Output(ids.CMP_FIG, "style"), Output(ids.CMP_INFO, "children"),
       Input(ids.RUNS, "value"), Input(ids.CMP_KIND, "value"), Input(ids.CMP_KEY, "value"),
       Input(ids.CMP_STAT, "value"), Input(ids.INTERVAL, "n_intervals"))(compare.compare_figure)
    cb(Output(ids.VERSIONS_CARD, "className"), Output(ids.RANKS_CARD, "className"), latest,
       with_src=False)(analysis.extra_cards)
    register_incidents_and_spread(app, cb)
    app.clientside_callback(ClientsideFunction("gva", "show"), Output(ids.PAINTED, "data"),
                            Input(ids.ELEMENTS, "data"), Input(ids.COLORS, "data"))
    app.clientside_callback(ClientsideFunction("gva", "focus"), Output(ids.FOCUSED, "data"),
                            Input(ids.SEARCH_RESULT, "data"), prevent_initial_call=True)
    app.clientside_callback(ClientsideFunction("gva", "fit"),
                            Output(ids.FOCUSED, "data", allow_duplicate=True),
                            Input(ids.FIT, "n_clicks"), State(ids.GRAPH, "id"), prevent_initial_call=True)


def register_incidents_and_spread(app: Dash, cb) -> None:
    """Incidents under the loss curve and outlined in the graph; the spread over ranks."""
    latest, step = Input(ids.LATEST, "data"), Input(ids.STEP, "data")
    cb(Output(ids.INCIDENTS, "children"), Output(ids.INCIDENTS, "className"), latest,
       Input(ids.INCIDENT, "data"), Input(ids.OUTLINED, "data"))(incidents.panel)
    cb(Output(ids.INCIDENT, "data"), Output(ids.PICKED, "data", allow_duplicate=True),
       Input(ids.incident_row(ALL), "n_clicks"), State(ids.LATEST, "data"),
       prevent_initial_call=True)(_choose_row)
    cb(Output(ids.INCIDENT, "data", allow_duplicate=True), Input(ids.LOSS, "clickData"),
       State(ids.LATEST, "data"), prevent_initial_call=True)(incidents.choose_marker)
    cb(Output(ids.OUTLINED, "data"), Input(ids.INCIDENT, "data"), step, Input(ids.GRAPH_KEY, "data"),
       State(ids.LATEST, "data"))(incidents.outline)
    app.clientside_callback(ClientsideFunction("gva_incidents", "outline"),
                            Output(ids.OUTLINE_DONE, "data"), Input(ids.OUTLINED, "data"),
                            Input(ids.PAINTED, "data"))
    cb(Output(ids.SPREAD_CARD, "className"), Output(ids.SPREAD_KEY, "options"),
       Output(ids.SPREAD_KEY, "value"), latest, Input(ids.SELECTED, "data"),
       Input(ids.SPREAD_STAT, "value"), State(ids.GRAPH_KEY, "data"), State(ids.SPREAD_KEY, "value"),
       trigger="one")(spread_view.key_options)
    cb(Output(ids.SPREAD_FIG, "figure"), Output(ids.SPREAD_INFO, "children"), latest,
       Input(ids.SPREAD_KEY, "value"), Input(ids.SPREAD_STAT, "value"), step,
       trigger="all")(spread_view.figure)
    cb(Output(ids.SPREAD_DETAIL, "children"), Input(ids.SPREAD_FIG, "clickData"), latest,
       Input(ids.SPREAD_KEY, "value"), prevent_initial_call=True)(spread_view.detail)


def _choose_row(src, clicks, latest):
    return incidents.choose_row(src, dash.ctx.triggered_id, clicks, latest)


def _fold_adapter(src, trigger, _toggle, _fold_all, _unfold_all, _run, selected, key, folded, search):
    return callbacks.fold_modules(src, trigger, selected, key, folded, search)


def serve(runs_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 8050,
          debug: bool = False) -> None:
    """Serve the dashboard until interrupted (:func:`dashboard.server.serve`: waitress, the port
    checked before anything is printed, one line with the URL)."""
    from .server import serve as run

    run(runs_dir, host=host, port=port, debug=debug)
