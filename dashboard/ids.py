"""Every component id of the dashboard, in one place (layout, callbacks, tests and JS use these)."""
from __future__ import annotations

# page / run selection
LOCATION = "gva-location"
RUN = "gva-run"
RANK = "gva-rank"
LIVE = "gva-live"
INTERVAL = "gva-interval"
STATUS = "gva-status"
SKIPPED = "gva-skipped"          # entries of the runs root that could not be read
LATEST = "gva-latest"            # Store: what the run holds now (run, rank, steps, versions, ...)

# curves and step selection
LOSS = "gva-loss"
SCALARS = "gva-scalars"
METRICS = "gva-metrics"
STEP_SLIDER = "gva-step-slider"
STEP = "gva-step"                # Store: {"step": int | None, "follow": bool}
STEP_LABEL = "gva-step-label"

# the graph
GRAPH = "gva-graph"
GRAPH_KEY = "gva-graph-key"      # Store: key of the elements the browser holds
ELEMENTS = "gva-elements"        # Store: the elements, loaded into cytoscape by dashboard.js
GRAPH_INFO = "gva-graph-info"
METRIC = "gva-metric"
LEGEND = "gva-legend"
COLORS = "gva-colors"            # Store: colour payload the clientside painter applies
PAINTED = "gva-painted"          # Store: written by the clientside painter (dummy output)
SEARCH = "gva-search"
SEARCH_RESULT = "gva-search-result"
SEARCH_INFO = "gva-search-info"
FOCUSED = "gva-focused"          # Store: written by the clientside search focus (dummy output)
FOLDED = "gva-folded"      # Store: {"mode": "auto"} or {"paths": [...]}
FOLD_TOGGLE = "gva-fold-toggle"
FOLD_ALL = "gva-fold-all"
UNFOLD_ALL = "gva-unfold-all"
FIT = "gva-fit"

# node details
SELECTED = "gva-selected"        # Store: id of the node shown in the detail panel
DETAIL = "gva-detail"
DETAIL_AT_STEP = "gva-detail-at-step"
NODE_FIG = "gva-node-fig"

# gradient flow
FLOW = "gva-flow"
HEATMAP = "gva-heatmap"

# figures mounted after the graph's first paint (plotly and the second cytoscape load later)
PICKED = "gva-picked"            # Store: a step clicked or box-selected on a curve
MOUNT_TIMER = "gva-mount-timer"
MOUNTED = "gva-mounted"
LOSS_SLOT = "gva-loss-slot"
METRICS_SLOT = "gva-metrics-slot"
NODE_FIG_SLOT = "gva-node-fig-slot"
FLOW_SLOT = "gva-flow-slot"
HEATMAP_SLOT = "gva-heatmap-slot"
DIFF_SLOT = "gva-diff-slot"
RANK_FIG_SLOT = "gva-rank-fig-slot"

# runs side by side (``/?runs=a,b,c``)
COMPARE = "gva-compare"           # the section (moves to the top when the URL names runs)
RUNS = "gva-runs"                 # run names (``name`` or ``name@rank``) overlaid
CMP_KIND = "gva-cmp-kind"         # "param", "node" or "module"
CMP_KEY = "gva-cmp-key"
CMP_STAT = "gva-cmp-stat"
CMP_FIG = "gva-cmp-fig"
CMP_SLOT = "gva-cmp-slot"
CMP_INFO = "gva-cmp-info"

# graph versions and ranks
VERSIONS_CARD = "gva-versions-card"
RANKS_CARD = "gva-ranks-card"
VERSION_A = "gva-version-a"
VERSION_B = "gva-version-b"
DIFF_GRAPH = "gva-diff-graph"
DIFF_INFO = "gva-diff-info"
RANK_A = "gva-rank-a"
RANK_B = "gva-rank-b"
RANK_STAT = "gva-rank-stat"
RANK_FIG = "gva-rank-fig"

# incidents (under the loss curve) and the spread over the ranks of a gathered run
INCIDENTS = "gva-incidents"        # the list of incidents (hidden when the run has none)
INCIDENT = "gva-incident-chosen"   # Store: the chosen incident {"index", "run", "step", "nodes"}
OUTLINED = "gva-outlined"          # Store: node ids the browser outlines for the chosen incident
OUTLINE_DONE = "gva-outline-done"  # Store: written by the clientside outliner (dummy output)
SPREAD_CARD = "gva-spread-card"
SPREAD_KEY = "gva-spread-key"
SPREAD_STAT = "gva-spread-stat"
SPREAD_INFO = "gva-spread-info"
SPREAD_SLOT = "gva-spread-slot"
SPREAD_FIG = "gva-spread-fig"
SPREAD_DETAIL = "gva-spread-detail"


def incident_row(index) -> dict:
    """Pattern-matching id of row ``index`` of the incidents list (``dash.ALL``: every row)."""
    return {"type": "gva-incident", "index": index}
