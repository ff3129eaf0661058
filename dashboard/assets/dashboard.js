/* graphviz-autograd dashboard: clientside callbacks that work on the live cytoscape instance.
 *
 * The graph's elements arrive in a Store (not the Cytoscape component's `elements` prop) and
 * are added here: the prop path deep-compares and measures every element several times,
 * which takes seconds on big graphs. Colours and search highlights are applied here too, so
 * the server never resends the elements for a new step: zoom, pan, selection and folding
 * stay as the user left them. */
(function () {
  "use strict";
  var LABEL_MAX_NODES = 1500, LABEL_MIN_ZOOM = 0.45;
  var noUpdate = function () { return window.dash_clientside.no_update; };

  function cyOf(id) {
    var el = document.getElementById(id);
    return el && el._cyreg && el._cyreg.cy ? el._cyreg.cy : null;
  }
  function later(fn, attempt) {
    if (attempt < 100) { window.setTimeout(function () { fn(attempt + 1); }, 50); }
  }
  function setProps(id, props) {
    if (window.dash_clientside.set_props) { window.dash_clientside.set_props(id, props); }
  }

  /* The component syncs cytoscape's elements back into its `elements` prop on every add,
   * remove or drag, then diffs and measures them all: detach those listeners (tap, hover and
   * selection listeners stay). Nodes are not draggable (autoungrabify). */
  function detachSync(cy) {
    if (cy.scratch("_gvaDetached")) { return; }
    cy.removeListener("add");
    cy.removeListener("remove");
    cy.removeListener("dragfree");
    cy.scratch("_gvaDetached", true);
  }

  /* Show the whole drawing, as large as fits (up to 2.5x); never below `readable` (the zoom
   * at which the smallest label is 11 px): then the drawing's start (top left) is shown at
   * that zoom and the rest is a pan away. */
  function fitTo(cy, box, padding, readable) {
    var w = cy.width(), h = cy.height();
    var bw = Math.max(box[2] - box[0], 1), bh = Math.max(box[3] - box[1], 1);
    var zoom = Math.min((w - 2 * padding) / bw, (h - 2 * padding) / bh, 2.5);
    zoom = Math.max(cy.minZoom(), Math.min(cy.maxZoom(), zoom));
    if (readable && zoom < readable) {
      zoom = readable;
      var x = bw * zoom <= w - 2 * padding ? (w - zoom * (box[0] + box[2])) / 2 : padding - zoom * box[0];
      cy.viewport({zoom: zoom, pan: {x: x, y: padding - zoom * box[1]}});
      return;
    }
    cy.viewport({zoom: zoom, pan: {x: (w - zoom * (box[0] + box[2])) / 2,
                                   y: (h - zoom * (box[1] + box[3])) / 2}});
  }

  /* Big graphs have labels off (see graph_view.stylesheet); label the nodes in view once the
   * user zooms in. */
  function labelInView(cy) {
    if (cy.nodes().length <= LABEL_MAX_NODES) { return; }
    var ext = cy.extent(), zoomedIn = cy.zoom() >= LABEL_MIN_ZOOM;
    var mx = ext.w * 0.25, my = ext.h * 0.25;      // nodes cut by the edge get labels too
    var inside = function (n) {
      var p = n.position();
      return p.x >= ext.x1 - mx && p.x <= ext.x2 + mx && p.y >= ext.y1 - my && p.y <= ext.y2 + my;
    };
    cy.batch(function () {
      cy.nodes(".lbl").forEach(function (n) {
        if (!zoomedIn || !inside(n)) { n.removeClass("lbl"); }
      });
      if (zoomedIn) {
        cy.nodes().forEach(function (n) { if (inside(n)) { n.addClass("lbl"); } });
      }
    });
  }
  function watchLabels(cy) {
    if (cy.scratch("_gvaLabels")) { return; }
    var timer = null;
    cy.scratch("_gvaLabels", true);
    cy.on("viewport", function () {
      window.clearTimeout(timer);
      timer = window.setTimeout(function () { labelInView(cy); }, 120);
    });
  }

  function colourOf(colors, i) {
    var c = colors.c[i];
    return c >= 0 ? colors.p[c] : (c === -2 ? colors.nan : (c === -3 ? colors.zero : colors.none));
  }
  /* The text colour chosen on the server for that fill (WCAG AA contrast). */
  function textOf(colors, i) {
    var c = colors.c[i];
    return c >= 0 ? colors.t[c] : (c === -2 ? colors.tnan : (c === -3 ? colors.tzero : colors.tnone));
  }

  /* Replace the graph with `payload` (fetched elements of `ref.key`); colours known for that
   * key go into the element data before adding, so no per-node update follows. */
  function load(cy, ref, payload, colors) {
    var el = cy.container(), previous = cy.scratch("_gvaKey");
    if (colors && colors.key === ref.key) {
      var marked = markSet(colors);
      payload.elements.forEach(function (e) {
        if (e.data.ix === undefined) { return; }
        if (!colors.off) {
          e.data.bg = colourOf(colors, e.data.ix);
          e.data.fg = textOf(colors, e.data.ix);
        }
        e.data.mark = marked[e.data.ix] ? 1 : 0;
      });
    }
    cy.batch(function () {
      cy.elements().remove();
      cy.add(payload.elements);
    });
    cy.scratch("_gvaKey", ref.key);
    cy.scratch("_gvaBox", payload);
    el.setAttribute("data-key", ref.key);
    if (previous !== ref.key) {      // a new graph or folding: show it (live refreshes keep the view)
      fitTo(cy, payload.bbox, 16, payload.readable);
      el.setAttribute("data-fitted", ref.key);
    }
  }

  /* Node indexes a finding of the selected step names (drawn with a red double border). */
  function markSet(colors) {
    var set = {};
    (colors.m || []).forEach(function (i) { set[i] = true; });
    return set;
  }

  function paint(cy, colors) {
    var marked = markSet(colors);
    cy.batch(function () {
      cy.nodes("[ix >= 0]").forEach(function (n) {
        var m = marked[n.data("ix")] ? 1 : 0;
        if (n.data("mark") !== m) { n.data("mark", m); }
        if (colors.off) { n.removeData("bg"); n.removeData("fg"); return; }
        var c = colourOf(colors, n.data("ix")), t = textOf(colors, n.data("ix"));
        if (n.data("bg") !== c) { n.data("bg", c); }
        if (n.data("fg") !== t) { n.data("fg", t); }
      });
    });
  }

  function painted(cy, colors) {
    window.requestAnimationFrame(function () {
      cy.container().setAttribute("data-painted", colors.stamp);
      setProps("gva-painted", {data: colors.stamp});
    });
  }

  function fetchElements(ref, attempt, done) {
    window.fetch(ref.url, {credentials: "same-origin"}).then(function (r) {
      if (!r.ok) { throw new Error("HTTP " + r.status); }
      return r.json();
    }).then(done).catch(function (err) {
      if (attempt < 3) {
        window.setTimeout(function () { fetchElements(ref, attempt + 1, done); }, 300);
      } else {
        window.console.warn("graphviz-autograd: cannot load the graph", ref.key, err);
      }
    });
  }

  /* ELEMENTS (a reference to fetch) and COLORS stores -> the cytoscape instance. */
  function show(ref, colors) {
    var target = (ref && ref.target) || (colors && colors.target);
    if (!target) {               // nothing to draw (no run, no graph yet): let the figures mount
      setProps("gva-painted", {data: "none"});
      return noUpdate();
    }
    var run = function (attempt) {
      var cy = cyOf(target);
      if (!cy) { later(run, attempt); return; }
      detachSync(cy);
      watchLabels(cy);
      if (colors) { cy.scratch("_gvaColors", colors); }
      if (ref && cy.scratch("_gvaKey") !== ref.key) {
        if (cy.scratch("_gvaLoading") === ref.key) { return; }   // colours wait for the load
        cy.scratch("_gvaLoading", ref.key);
        fetchElements(ref, 0, function (payload) {
          if (cy.scratch("_gvaLoading") !== ref.key) { return; }  // a newer graph was asked for
          var latest = cy.scratch("_gvaColors");
          load(cy, ref, payload, latest);
          cy.scratch("_gvaLoading", null);
          if (latest && latest.key === ref.key) { painted(cy, latest); }
        });
        return;
      }
      if (colors && colors.key === cy.scratch("_gvaKey")) {
        paint(cy, colors);
        painted(cy, colors);
      }
    };
    run(0);
    return noUpdate();
  }

  function focus(result) {
    if (!result) { return noUpdate(); }
    var run = function (attempt) {
      var cy = cyOf(result.target);
      if (!cy) { later(run, attempt); return; }
      cy.batch(function () {
        cy.nodes(".match").removeClass("match");
        (result.ids || []).forEach(function (id) { cy.getElementById(id).addClass("match"); });
      });
      if (!result.focus) { return; }
      var node = cy.getElementById(result.focus);
      if (node.empty()) { later(run, attempt); return; }
      cy.nodes(":selected").unselect();
      node.select();
      cy.stop();
      cy.animate({center: {eles: node}, zoom: Math.max(cy.zoom(), 1.0)}, {duration: 250});
      cy.container().setAttribute("data-focused", result.focus);
    };
    run(0);
    return result.focus || "";
  }

  function fit(_n, id) {               // the "fit" button: all of it, however small
    var cy = cyOf(id), payload = cy && cy.scratch("_gvaBox");
    if (payload) { fitTo(cy, payload.bbox, 16, null); }
    return noUpdate();
  }

  /* Cytoscape caches where its canvas sits on the page and refreshes that only on scroll or
   * resize of the canvas itself; when content above it grows (figures mounting, a longer
   * legend) clicks would land beside the nodes. Refresh it right before any click and when
   * the page changes size. */
  function forEachCy(fn) {
    document.querySelectorAll(".gva-cy").forEach(function (el) {
      if (el._cyreg && el._cyreg.cy) { fn(el._cyreg.cy); }
    });
  }
  function invalidate(cy) {
    var r = cy.renderer && cy.renderer();
    if (r && r.invalidateContainerClientCoordsCache) { r.invalidateContainerClientCoordsCache(); }
  }
  document.addEventListener("pointerdown", function () { forEachCy(invalidate); }, true);
  document.addEventListener("mousedown", function () { forEachCy(invalidate); }, true);
  if (window.ResizeObserver) {
    var watch = function () {
      if (!document.body) { window.setTimeout(watch, 50); return; }
      new window.ResizeObserver(function () { forEachCy(invalidate); }).observe(document.body);
    };
    watch();
  }

  window.dash_clientside = Object.assign({}, window.dash_clientside, {
    gva: {show: show, focus: focus, fit: fit}
  });
}());
