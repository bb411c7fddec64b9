// The scene-map viewer: the scene list, the imagery with the land-cover map over it, the legend and point
// queries. Everything it loads comes from the server that served the page (tiles, JSON, Leaflet itself).
"use strict";

(function () {
  const state = { classes: [], scenes: [], scene: null, layers: {}, pending: 0 };
  const $ = (id) => document.getElementById(id);
  const map = L.map("map", { zoomSnap: 0.25 });
  map.attributionControl.setPrefix("Leaflet");  // plain text: the default prefix is a link with an image
  L.control.scale({ imperial: false }).addTo(map);
  for (const [pane, z] of [["imagery", 200], ["landcover", 300], ["confidence", 350]]) {
    map.createPane(pane).style.zIndex = z;
  }
  const marker = L.circleMarker([0, 0], { radius: 6, color: "#000", weight: 2, fillOpacity: 0 });

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    Object.assign(node, attrs || {});
    for (const child of children) node.append(child);
    return node;
  }

  function fmt(value, digits) {
    return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
  }

  function swatch(rgb) {
    const box = el("span", { className: "swatch" });
    box.style.background = `rgb(${rgb.join(",")})`;
    return box;
  }

  function tileLayer(scene, layer, pane, opacity) {
    const [minZoom, maxZoom] = scene.zooms;
    const [w, s, e, n] = scene.bounds;
    const url = `/tiles/${encodeURIComponent(scene.name)}/${layer}/{z}/{x}/{y}.png?v=${scene.version}`;
    const tiles = L.tileLayer(url, {
      pane, opacity, bounds: L.latLngBounds([s, w], [n, e]),
      minZoom: Math.max(0, minZoom - 4), maxNativeZoom: maxZoom, maxZoom: maxZoom + 4,
      tileSize: 256, keepBuffer: 1, attribution: layer === "map" ? scene.name : "",
    });
    tiles.on("loading", () => { state.pending += 1; document.body.dataset.tiles = "loading"; });
    tiles.on("load", () => {
      state.pending = Math.max(0, state.pending - 1);
      if (state.pending === 0) document.body.dataset.tiles = "loaded";
    });
    return tiles;
  }

  function sceneMeta(scene) {
    const size = `${scene.width.toLocaleString("en")} × ${scene.height.toLocaleString("en")} px`;
    const unit = scene.pixel_unit;
    const pixel = unit === "°" ? `${scene.pixel_size[0].toExponential(1)}°` : `${fmt(scene.pixel_size[0], 2)} ${unit}`;
    const s = scene.scores;
    const scores = s ? `mIoU ${fmt(s.mIoU, 3)} · FWIoU ${fmt(s.FWIoU, 3)}` : "not scored (no label)";
    return [`${size} · ${pixel} pixels · ${scene.crs}`, scores];
  }

  function renderSceneList() {
    const list = $("scene-list");
    list.replaceChildren();
    if (!state.scenes.length) list.append(el("li", { className: "note", textContent: "No maps in the folder." }));
    for (const scene of state.scenes) {
      const button = el("button", { type: "button" },
        el("div", { className: "name", textContent: scene.name }),
        ...sceneMeta(scene).map((line) => el("div", { className: "meta", textContent: line })));
      button.dataset.scene = scene.name;
      button.addEventListener("click", () => selectScene(scene));
      list.append(el("li", {}, button));
    }
  }

  function renderLegend(scene) {
    const body = $("legend").tBodies[0];
    body.replaceChildren();
    const areas = scene ? scene.areas : null;
    for (const cls of state.classes) {
      const row = areas ? areas.classes[cls.index] : null;
      const tr = el("tr", {},
        el("td", {}, swatch(scene ? scene.class_colours[cls.index] : cls.colour)),
        el("td", { textContent: cls.name }),
        el("td", { className: "num", textContent: fmt(row && row.hectares, 2) }),
        el("td", { className: "num", textContent: row ? `${fmt(100 * row.share, 1)} %` : "–" }));
      tr.dataset.class = cls.name;
      body.append(tr);
    }
    $("legend-total").textContent = areas ? `${fmt(areas.mapped_hectares, 2)} ha` : "";
    $("legend-note").textContent = areas ? `${areas.note}. Areas ${scene.areas_source}.` : "";
  }

  function setLayers() {
    for (const [name, layer] of Object.entries(state.layers)) {
      const box = $(`layer-${name}`);
      if (box && box.checked) layer.addTo(map); else layer.remove();
    }
  }

  function selectScene(scene) {
    for (const layer of Object.values(state.layers)) layer.remove();
    state.scene = scene;
    state.pending = 0;
    const opacity = Number($("opacity").value) / 100;
    state.layers = { map: tileLayer(scene, "map", "landcover", opacity) };
    if (scene.layers.includes("image")) state.layers.image = tileLayer(scene, "image", "imagery", 1);
    if (scene.layers.includes("confidence")) {
      state.layers.confidence = tileLayer(scene, "confidence", "confidence", 0.8);
    }
    $("row-image").hidden = !state.layers.image;
    $("row-confidence").hidden = $("confidence-legend").hidden = !state.layers.confidence;
    for (const button of document.querySelectorAll("#scene-list button")) {
      button.setAttribute("aria-current", String(button.dataset.scene === scene.name));
    }
    history.replaceState(null, "", `#${encodeURIComponent(scene.name)}`);
    renderLegend(scene);
    marker.remove();
    $("point").textContent = "Click the map to read its class.";
    const [w, s, e, n] = scene.bounds;
    map.fitBounds([[s, w], [n, e]], { animate: false });
    setLayers();
  }

  function showPoint(answer) {
    const box = $("point");
    box.replaceChildren();
    const where = `${fmt(answer.lat, 6)}°, ${fmt(answer.lon, 6)}° · ${answer.crs} ${fmt(answer.x, 1)}, ${fmt(answer.y, 1)}`;
    if (!answer.inside || !answer.class) {
      box.append(el("div", { className: "class", textContent: answer.inside ? "nodata" : "outside the scene" }));
    } else {
      const c = answer.class;
      box.append(el("div", { className: "class" }, swatch(c.colour), ` ${c.name}`),
        el("div", { textContent: `class value ${c.value} (index ${c.index}, stored ${c.stored})` }));
      if (answer.confidence !== null) box.append(el("div", { textContent: `confidence ${fmt(answer.confidence, 2)}` }));
    }
    box.append(el("div", { textContent: where }));
    if (answer.inside) box.append(el("div", { textContent: `row ${answer.row}, column ${answer.column}` }));
    box.dataset.class = answer.class ? answer.class.name : "";
  }

  async function queryPoint(latlng) {
    if (!state.scene) return;
    const p = latlng.wrap();
    marker.setLatLng(p).addTo(map);
    const url = `/api/scenes/${encodeURIComponent(state.scene.name)}/point?lon=${p.lng}&lat=${p.lat}`;
    const response = await fetch(url);
    if (response.ok) showPoint(await response.json());
  }

  function wireControls(data) {
    const slider = $("opacity");
    slider.addEventListener("input", () => {
      $("opacity-value").textContent = `${slider.value} %`;
      if (state.layers.map) state.layers.map.setOpacity(Number(slider.value) / 100);
    });
    for (const name of ["map", "image", "confidence"]) $(`layer-${name}`).addEventListener("change", setLayers);
    const stops = data.confidence_colours.map((c) => `rgb(${c.join(",")})`).join(",");
    $("confidence-ramp").style.background = `linear-gradient(to right, ${stops})`;
    map.on("click", (e) => queryPoint(e.latlng));
  }

  async function start() {
    const data = await (await fetch("/api/scenes")).json();
    state.classes = data.classes;
    state.scenes = data.scenes;
    $("problems").replaceChildren(...data.problems.map((p) => el("li", { textContent: p })));
    wireControls(data);
    renderSceneList();
    renderLegend(null);
    const wanted = decodeURIComponent(location.hash.slice(1));
    const first = state.scenes.find((s) => s.name === wanted) || state.scenes[0];
    if (first) selectScene(first); else map.setView([0, 0], 1);
    document.body.dataset.ready = "true";
  }

  window.viewer = { map, state };
  start();
})();
