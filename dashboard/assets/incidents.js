/* graphviz-autograd dashboard: outline the nodes of the chosen incident in the graph (class
 * "incident", a thick red border from the stylesheet). Runs again after every paint, since a
 * new graph or folding replaces the elements. The container's data-incident attribute lists
 * the outlined ids and data-incident-step the incident's step (what tests can read back). */
(function () {
  "use strict";
  function outline(chosen, _painted) {
    var noUpdate = window.dash_clientside.no_update;
    var el = document.getElementById((chosen && chosen.target) || "gva-graph");
    var cy = el && el._cyreg && el._cyreg.cy;
    if (!cy) { return noUpdate; }
    var ids = (chosen && chosen.ids) || [];
    var step = chosen && chosen.step !== undefined ? String(chosen.step) : "";
    if (chosen && chosen.key && cy.scratch("_gvaKey") !== chosen.key) { ids = []; step = ""; }  // not drawn yet
    var done = [];
    cy.batch(function () {
      cy.nodes(".incident").removeClass("incident");
      ids.forEach(function (id) {
        var n = cy.getElementById(id);
        if (n.nonempty()) { n.addClass("incident"); done.push(id); }
      });
    });
    el.setAttribute("data-incident", done.join(" "));
    el.setAttribute("data-incident-step", step);
    return done.join(" ");
  }
  window.dash_clientside = Object.assign({}, window.dash_clientside, {
    gva_incidents: {outline: outline}
  });
}());
