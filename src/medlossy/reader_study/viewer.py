"""The rating page's image viewer: windowing, zoom, pan, magnifier and scrolling, served
as /static/viewer.js (and its rules appended to /static/rater.css).

Data flow: the page's figure names the pair's stack (``data-stack``) -> the script fetches
it in two parts (``stacks``: part 1, the header and the pair's own slice, both sides,
preloaded by the page's head and drawn as the first view; part 2, the other slices, asked
for once that view is drawn), reading each as it arrives into one buffer -> per side
and slice, the
values go through a 65,536-entry lookup table of the current window into an RGBA bitmap
(cached until the window changes) -> each frame draws both bitmaps with the same zoom, pan
and magnifier, so the two sides are always in step. Nothing is pre-windowed: every grey
level comes from the 16-bit values.

Timing: ``performance`` measures named ``medlossy-first-view`` (navigation start to the
first drawn frame) and ``medlossy-render`` (an input event to its frame drawn), read by the
browser test and ``bench/reader_view.py``; the mark ``medlossy-shown`` (that first frame)
starts the response time that ``assets.JS`` sends with the answer.

Keys (the answer keys 1-3, arrows and space stay the rater's answers): wheel, PageUp /
PageDown, j / k: slices; + / -: zoom; drag: pan; right-drag (or w, then drag): window;
Shift + arrows: window width / level; 4-7: presets; 0: reset; m: magnifier.

Flicker design (the figure has ``data-flicker-ms``): one viewport instead of two, showing
the stack's left and right planes in turn, each for that many ms measured on the frame
clock (``requestAnimationFrame``), from the first frame with both planes in; window, zoom,
pan, magnifier and scrolling apply to it as to the two panes.

Practice (the start page's figure ``practice``, no ``figure``): once the page has loaded,
the script makes a CT test pattern as a stack (``practiceStack``: no request, no study
data) and feeds it, a plane per task, to the same reading, windowing and drawing code,
which is thus compiled before the rater's first pair.

Failures: part 1 failed or cut short (no first view): the composite PNG instead of the
viewer, or in a flicker study a line saying the pair cannot be shown (its answers, disabled
in the page, stay so); part 2: the first view stays, with a line saying so, and scrolling
reaches only the slices that arrived.

Kept apart from ``assets`` so that other viewing modes can be added beside it.
"""

VIEWER_CSS = """
.viewer { display: flex; flex-direction: column; align-items: center; gap: 6px; }
.viewer .panes { display: flex; gap: 12px; }
.viewer canvas { background: #000; cursor: grab; touch-action: none; display: block; }
.viewer.window-mode canvas { cursor: ns-resize; }
.viewer .tools { display: flex; flex-wrap: wrap; gap: 6px; align-items: center;
                 font-size: 13px; color: #aaa; }
.viewer .tools button { font: inherit; color: #ddd; background: #2d2d2d; padding: 3px 9px;
                        border: 1px solid #4a4a4a; border-radius: 5px; cursor: pointer; }
.viewer .tools button.on { border-color: #6c9; }
.viewer .readout { font-variant-numeric: tabular-nums; min-width: 300px; }
.practice .viewer { margin-top: 8px; }
.viewer-note { margin: 4px 0; color: #f0c36d; font-size: 14px; }
"""

VIEWER_JS = r"""
"use strict";
(function () {
  // A pair's figure (its stack from the server), or the start page's practice figure (a
  // test pattern made here: ``practise``), shown by the same code.
  var figure = document.getElementById("figure");
  var practice = !figure && document.getElementById("practice");
  if (practice) { figure = practice; }
  else if (!figure || !figure.dataset.stack) { return; }
  var flickerMs = Number(figure.dataset.flickerMs) || 0;
  // A line under the toolbar (or in place of the viewer) saying what could not be shown.
  function note(parent, before, text) {
    var line = document.createElement("p");
    line.className = "viewer-note"; line.id = "viewer-note"; line.setAttribute("role", "alert");
    line.textContent = text;
    parent.insertBefore(line, before);
  }
  // The stack could not be had before a first view: the composite image, as a browser
  // without script shows it (the page has it only in <noscript>, so that it is not fetched
  // beside the stack). A flicker pair has no such image (the composite is side by side,
  // not the design): it says so, and its answers stay disabled (``answerable``).
  function fallBack() {
    var viewer = document.getElementById("viewer");
    if (viewer) { viewer.remove(); }
    if (flickerMs) {
      note(figure, figure.firstChild, "This pair cannot be shown: its images could not be " +
           "loaded. Go on with the next pair (this one is offered again later) or reload " +
           "the page.");
      return;
    }
    var image = document.createElement("img");
    image.id = "pair"; image.src = figure.dataset.image;
    image.alt = "two versions of one CT or MR slice, side by side";
    figure.insertBefore(image, figure.firstChild);
  }
  // A flicker's answers are disabled in the page until its first view is drawn: one not
  // seen cannot be judged.
  function answerable() {
    document.querySelectorAll("#answer-form button[disabled]").forEach(function (button) {
      button.disabled = false;
    });
  }
  var CT_NAMES = ["soft tissue", "lung", "bone", "brain"];
  var MR_NAMES = ["0.5-99.5 %", "1-99 %", "2-98 %", "5-95 %"];
  var MAX_ZOOM = 8, MAGNIFY = 3, LENS = 80;

  var HEADER = 128;

  // The file holds the slices nearest the pair's own first (its own, then one step away on
  // either side...), each as left then right: the first view needs only the first two
  // planes, drawn while the rest is still arriving.
  function parse(buffer) {
    var view = new DataView(buffer), magic = "";
    for (var i = 0; i < 8; i++) { magic += String.fromCharCode(view.getUint8(i)); }
    if (magic !== "MLSTACK1") { throw new Error("not a stack"); }
    var u = function (k) { return view.getUint32(8 + 4 * k, true); };
    var d = function (k) { return view.getFloat64(32 + 8 * k, true); };
    var stack = { slices: u(0), rows: u(1), columns: u(2), centre: u(3), ct: u(4) === 0,
                  slope: d(0), intercept: d(1), windows: [], buffer: buffer, received: 0 };
    for (var w = 0; w < 5; w++) { stack.windows.push([d(2 + 2 * w), d(3 + 2 * w)]); }
    stack.plane = stack.rows * stack.columns;
    var order = [];
    for (var s = 0; s < stack.slices; s++) { order.push(s); }
    order.sort(function (a, b) {
      return Math.abs(a - stack.centre) - Math.abs(b - stack.centre) || a - b;
    });
    stack.rank = [];
    order.forEach(function (slice, rank) { stack.rank[slice] = rank; });
    stack.size = HEADER + 4 * stack.slices * stack.plane;
    return stack;
  }

  function planeEnd(stack, slice, side) {
    return HEADER + (2 * stack.rank[slice] + side + 1) * stack.plane * 2;
  }

  function codesOf(stack, slice, side) {
    var end = planeEnd(stack, slice, side);
    return new Int16Array(stack.buffer, end - stack.plane * 2, stack.plane);
  }

  function Viewer(stack) {
    this.stack = stack;
    this.names = stack.ct ? CT_NAMES : MR_NAMES;
    this.cache = [{}, {}];
    this.lens = null;
    this.windowMode = false;
    this.pending = null;
    this.waiting = null;  // the first input not drawn yet: its slice had not arrived
    this.drawn = null;  // the slice on screen: kept while the one asked for is arriving
    this.cutOff = false;  // the stack stopped before its end: the rest never comes
    // Flicker design: one viewport showing side ``phase`` (0: the stack's left plane, shown
    // first), switched every ``flickerMs`` on the frame clock, the same time for both.
    this.flickerMs = flickerMs;
    this.phase = 0; this.flips = 0;
    this.reset();
    this.build();
    if (this.flickerMs) { this.flicker(); }
  }

  Viewer.prototype.flicker = function () {
    var self = this, start = null;
    function tick(now) {
      if (start === null && self.ready()) { start = now; }
      var phase = start === null ? 0 : Math.floor((now - start) / self.flickerMs) % 2;
      if (phase !== self.phase) { self.phase = phase; self.flips += 1; self.draw(); }
      window.requestAnimationFrame(tick);
    }
    window.requestAnimationFrame(tick);
  };

  Viewer.prototype.reset = function () {
    this.slice = this.stack.centre;
    this.zoom = 1; this.panX = 0; this.panY = 0;
    this.setWindow(this.stack.windows[0][0], this.stack.windows[0][1], "study");
  };

  Viewer.prototype.setWindow = function (width, level, name) {
    this.width = Math.max(width, this.stack.slope); this.level = level;
    this.preset = name || "custom";
    var lut = new Uint32Array(65536), low = level - this.width / 2;
    var gain = 255 / this.width, slope = this.stack.slope, intercept = this.stack.intercept;
    for (var code = -32768; code < 32768; code++) {
      var grey = Math.round(((code * slope + intercept) - low) * gain);
      grey = grey < 0 ? 0 : (grey > 255 ? 255 : grey);
      lut[code + 32768] = 0xff000000 | (grey << 16) | (grey << 8) | grey;
    }
    this.lut = lut;
    this.cache = [{}, {}];
  };

  Viewer.prototype.arrivedSlice = function (slice) {
    return this.stack.received >= planeEnd(this.stack, slice, 1);
  };

  Viewer.prototype.ready = function () { return this.arrivedSlice(this.slice); };

  Viewer.prototype.bitmap = function (side, slice) {
    var cached = this.cache[side][slice];
    if (cached) { return cached; }
    var stack = this.stack, codes = codesOf(stack, slice, side), lut = this.lut;
    var canvas = document.createElement("canvas");
    canvas.width = stack.columns; canvas.height = stack.rows;
    var context = canvas.getContext("2d");
    var pixels = context.createImageData(stack.columns, stack.rows);
    var out = new Uint32Array(pixels.data.buffer);
    for (var i = 0; i < codes.length; i++) { out[i] = lut[codes[i] + 32768]; }
    context.putImageData(pixels, 0, 0);
    this.cache[side][slice] = canvas;
    return canvas;
  };

  Viewer.prototype.build = function () {
    var self = this, stack = this.stack;
    var root = document.createElement("div");
    root.className = "viewer"; root.id = "viewer";
    var tools = document.createElement("div");
    tools.className = "tools";
    var add = function (label, title, action, id) {
      var button = document.createElement("button");
      button.type = "button"; button.textContent = label; button.title = title;
      if (id) { button.id = id; }
      button.addEventListener("click", function (event) {
        action(); button.blur(); self.request(event.timeStamp);
      });
      tools.appendChild(button);
      return button;
    };
    this.names.forEach(function (name, index) {
      add(name, "window preset (key " + (index + 4) + ")", function () {
        self.usePreset(index);
      }, "preset-" + (index + 4));
    });
    add("\u2212", "zoom out (key -)", function () { self.zoomBy(0.5); }, "zoom-out");
    add("+", "zoom in (key +)", function () { self.zoomBy(2); }, "zoom-in");
    this.lensButton = add("magnifier", "magnifier (key m)", function () { self.toggleLens(); },
                          "magnifier");
    add("reset", "reset the view (key 0)", function () { self.reset(); }, "reset");
    this.readout = document.createElement("span");
    this.readout.className = "readout"; this.readout.id = "readout";
    tools.appendChild(this.readout);
    var panes = document.createElement("div");
    panes.className = "panes";
    var height = Math.min(window.innerHeight * 0.58, 600);
    var sides = this.flickerMs ? ["flicker"] : ["left", "right"];
    // The page's width, or the practice figure's column on the start page (read there
    // only: it forces a layout, which a pair's first view need not wait for).
    var room = window.innerWidth * 0.94;
    if (practice) { room = Math.min(room, figure.parentElement.clientWidth); }
    var width = Math.min((room - 12 * (sides.length - 1)) / sides.length,
                         height * stack.columns / stack.rows);
    height = width * stack.rows / stack.columns;
    var ratio = window.devicePixelRatio || 1;
    this.canvases = sides.map(function (side) {
      var canvas = document.createElement("canvas");
      canvas.id = "view-" + side;
      canvas.style.width = width + "px"; canvas.style.height = height + "px";
      canvas.width = Math.round(width * ratio); canvas.height = Math.round(height * ratio);
      panes.appendChild(canvas);
      return canvas;
    });
    this.scale = ratio;
    root.appendChild(tools); root.appendChild(panes);
    this.root = root;
    figure.insertBefore(root, figure.firstChild);
    this.listen();
  };

  Viewer.prototype.usePreset = function (index) {
    var w = this.stack.windows[index + 1];
    this.setWindow(w[0], w[1], this.names[index]);
  };

  Viewer.prototype.zoomBy = function (factor) {
    this.zoom = Math.min(MAX_ZOOM, Math.max(1, this.zoom * factor));
    if (this.zoom === 1) { this.panX = 0; this.panY = 0; }
  };

  // Once the stack is cut off, only to slices that arrived (nearest the pair's own first,
  // so they are one run of slices around it).
  Viewer.prototype.scroll = function (step) {
    var slice = Math.min(this.stack.slices - 1, Math.max(0, this.slice + step));
    if (!this.cutOff || this.arrivedSlice(slice)) { this.slice = slice; }
  };

  Viewer.prototype.toggleLens = function () {
    this.lensOn = !this.lensOn;
    this.lensButton.classList.toggle("on", this.lensOn);
  };

  // One frame per animation frame, whatever the number of events; "medlossy-render"
  // measures from the (first) event that asked for it to the frame drawn.
  Viewer.prototype.request = function (since) {
    var self = this;
    if (this.pending !== null) { return; }
    this.pending = since;
    window.requestAnimationFrame(function () {
      var start = self.pending;
      self.pending = null;
      if (!self.draw()) {
        self.waiting = self.waiting === null ? start : Math.min(self.waiting, start);
        return;
      }
      self.waiting = null;
      var now = performance.now();
      if (!self.shown) {  // navigation start to the first frame drawn
        self.shown = true;
        answerable();
        performance.mark("medlossy-shown", { startTime: now });
        performance.measure("medlossy-first-view", { start: 0, end: now });
      } else {
        performance.measure("medlossy-render", { start: start, end: now });
      }
    });
  };

  Viewer.prototype.fit = function () {
    var canvas = this.canvases[0];
    return Math.min(canvas.width / this.stack.columns, canvas.height / this.stack.rows);
  };

  // Draws the slice asked for, or while it is arriving the one already on screen (with
  // the current window, zoom and pan) and says so: false until the one asked for is drawn.
  Viewer.prototype.draw = function () {
    var self = this, stack = this.stack, scale = this.fit() * this.zoom;
    var slice = this.ready() ? this.slice : this.drawn;
    if (slice === null) { return false; }  // drawn when its planes arrive (``arrived``)
    this.canvases.forEach(function (canvas, side) {
      var context = canvas.getContext("2d");
      context.setTransform(1, 0, 0, 1, 0, 0);
      context.fillStyle = "#000";
      context.fillRect(0, 0, canvas.width, canvas.height);
      var bitmap = self.bitmap(self.flickerMs ? self.phase : side, slice);
      context.imageSmoothingEnabled = scale < 1;
      context.setTransform(scale, 0, 0, scale,
                           canvas.width / 2 + self.panX * scale - stack.columns * scale / 2,
                           canvas.height / 2 + self.panY * scale - stack.rows * scale / 2);
      context.drawImage(bitmap, 0, 0);
      if (self.lensOn && self.lens) { self.drawLens(context, bitmap, scale); }
    });
    this.drawn = slice;
    var root = this.root;
    root.dataset.slice = slice; root.dataset.zoom = this.zoom;
    root.dataset.width = this.width; root.dataset.level = this.level;
    root.dataset.panX = this.panX; root.dataset.panY = this.panY;
    root.dataset.preset = this.preset; root.dataset.magnifier = this.lensOn ? "on" : "off";
    if (this.flickerMs) { root.dataset.phase = this.phase; root.dataset.flips = this.flips; }
    if (slice === this.slice) { delete root.dataset.loading; }
    else { root.dataset.loading = this.slice; }
    this.readout.textContent = "W " + Math.round(this.width) + " / L " +
      Math.round(this.level) + " (" + this.preset + ") \u00b7 slice " + (slice + 1) +
      " / " + stack.slices + " \u00b7 " + this.zoom + "x" +
      (this.flickerMs ? " \u00b7 flicker " + this.flickerMs + " ms" : "") +
      (slice === this.slice ? "" : " \u00b7 loading slice " + (this.slice + 1) + "\u2026");
    return slice === this.slice;
  };

  // The rest of the stack will not come (part 2 failed or was cut short): stay on what
  // arrived, say so once, and let scrolling reach only the slices that arrived.
  Viewer.prototype.stopped = function () {
    var stack = this.stack, reach = [];
    this.cutOff = true;
    for (var s = 0; s < stack.slices; s++) { if (this.arrivedSlice(s)) { reach.push(s); } }
    note(this.root, this.root.querySelector(".panes"), "The other slices could not be " +
         "loaded; " + (reach.length > 1 ? "slices " + (reach[0] + 1) + " to " +
         (reach[reach.length - 1] + 1) + " can" : "this slice can") + " still be read.");
    if (!this.ready()) { this.slice = this.drawn; this.waiting = null; }
    this.request(performance.now());
  };

  // More of the stack arrived: draw if the slice shown was waiting for it, timed from the
  // input that asked for it; the first frame drawn is the first view.
  Viewer.prototype.arrived = function (received) {
    var waiting = !this.ready();
    this.stack.received = received;
    if (waiting && this.ready()) {
      // Window both sides now, while the frame is awaited, rather than in it.
      this.bitmap(0, this.slice); this.bitmap(1, this.slice);
      this.request(!this.shown ? 0 : this.waiting === null ? performance.now() : this.waiting);
    }
  };

  Viewer.prototype.drawLens = function (context, bitmap, scale) {
    var x = this.lens[0] * this.scale, y = this.lens[1] * this.scale, r = LENS * this.scale;
    // The image point under the pointer stays put; around it, MAGNIFY times larger.
    var canvas = context.canvas, big = scale * MAGNIFY;
    var originX = canvas.width / 2 + this.panX * scale - this.stack.columns * scale / 2;
    var originY = canvas.height / 2 + this.panY * scale - this.stack.rows * scale / 2;
    var u = (x - originX) / scale, v = (y - originY) / scale;
    context.save();
    context.setTransform(1, 0, 0, 1, 0, 0);
    context.beginPath(); context.arc(x, y, r, 0, 2 * Math.PI); context.clip();
    context.fillStyle = "#000"; context.fillRect(x - r, y - r, 2 * r, 2 * r);
    context.imageSmoothingEnabled = false;
    context.setTransform(big, 0, 0, big, x - u * big, y - v * big);
    context.drawImage(bitmap, 0, 0);
    context.restore();
    // The ring around the disc, in canvas pixels: restore() brought back the image's zoom.
    context.save();
    context.setTransform(1, 0, 0, 1, 0, 0);
    context.strokeStyle = "#6c9"; context.lineWidth = this.scale;
    context.beginPath(); context.arc(x, y, r, 0, 2 * Math.PI); context.stroke();
    context.restore();
  };

  Viewer.prototype.listen = function () {
    var self = this, drag = null;
    this.canvases.forEach(function (canvas) {
      canvas.addEventListener("wheel", function (event) {
        event.preventDefault();
        if (event.ctrlKey) { self.zoomBy(event.deltaY < 0 ? 2 : 0.5); }
        else { self.scroll(event.deltaY > 0 ? 1 : -1); }
        self.request(event.timeStamp);
      }, { passive: false });
      canvas.addEventListener("contextmenu", function (event) { event.preventDefault(); });
      canvas.addEventListener("pointerdown", function (event) {
        canvas.setPointerCapture(event.pointerId);
        drag = { x: event.clientX, y: event.clientY, panX: self.panX, panY: self.panY,
                 width: self.width, level: self.level,
                 window: event.button === 2 || self.windowMode };
      });
      canvas.addEventListener("pointermove", function (event) {
        var box = canvas.getBoundingClientRect();
        self.lens = [event.clientX - box.left, event.clientY - box.top];
        if (drag) {
          var dx = event.clientX - drag.x, dy = event.clientY - drag.y;
          if (drag.window) {  // horizontal: width; vertical: level (down = darker)
            var step = Math.max(drag.width, self.stack.slope * 256) / 256;
            self.setWindow(Math.max(drag.width + dx * step, self.stack.slope),
                           drag.level + dy * step);
          } else {
            var scale = self.fit() * self.zoom / self.scale;
            self.panX = drag.panX + dx / scale; self.panY = drag.panY + dy / scale;
          }
        }
        if (drag || self.lensOn) { self.request(event.timeStamp); }
      });
      var end = function () { drag = null; };
      canvas.addEventListener("pointerup", end);
      canvas.addEventListener("pointercancel", end);
      canvas.addEventListener("pointerleave", function (event) {
        self.lens = null;
        if (self.lensOn) { self.request(event.timeStamp); }
      });
    });
    document.addEventListener("keydown", function (event) {
      if (event.altKey || event.ctrlKey || event.metaKey) { return; }
      var key = event.key, handled = true;
      // On the start page PageUp/PageDown scroll the page (it is taller than a laptop
      // screen); the practice's slices follow j/k and the wheel.
      if (practice && (key === "PageDown" || key === "PageUp")) { return; }
      if (event.shiftKey && key.indexOf("Arrow") === 0) {
        var step = Math.max(self.width, self.stack.slope * 256) / 32;
        if (key === "ArrowLeft") { self.setWindow(self.width - step, self.level); }
        else if (key === "ArrowRight") { self.setWindow(self.width + step, self.level); }
        else if (key === "ArrowUp") { self.setWindow(self.width, self.level + step); }
        else { self.setWindow(self.width, self.level - step); }
      } else if (key === "PageDown" || key === "j") { self.scroll(1); }
      else if (key === "PageUp" || key === "k") { self.scroll(-1); }
      else if (key === "+" || key === "=") { self.zoomBy(2); }
      else if (key === "-") { self.zoomBy(0.5); }
      else if (key === "0") { self.reset(); }
      else if (key === "m") { self.toggleLens(); }
      else if (key === "w") {
        self.windowMode = !self.windowMode;
        self.root.classList.toggle("window-mode", self.windowMode);
      } else if (key >= "4" && key <= "7" && key.length === 1) { self.usePreset(key - 4); }
      else { handled = false; }
      if (handled) { event.preventDefault(); self.request(event.timeStamp); }
    });
  };

  // The stack comes in two parts, read as they arrive into one buffer of the size its
  // header gives: part 1 (the header and the pair's own slice, preloaded by the page's head
  // with the same credentials mode, so this fetch takes over a transfer begun while the page
  // was being parsed) is the first view; part 2 (the other slices) is asked for only once
  // that view is drawn, so that it does not compete with it.
  var bytes = null, received = 0, viewer = null;
  var head = new Uint8Array(HEADER), headFilled = 0;
  function take(chunk) {
    var offset = 0;
    if (!bytes) {
      offset = Math.min(chunk.length, HEADER - headFilled);
      head.set(chunk.subarray(0, offset), headFilled);
      headFilled += offset;
      if (headFilled < HEADER) { return; }
      var stack = parse(head.buffer);
      bytes = new Uint8Array(stack.size);
      bytes.set(head);
      stack.buffer = bytes.buffer;
      received = HEADER;
      viewer = new Viewer(stack);
    }
    if (received + chunk.length - offset > bytes.length) { throw new Error("stack size"); }
    bytes.set(chunk.subarray(offset), received);
    received += chunk.length - offset;
    viewer.arrived(received);
  }

  function load(part) {
    return fetch(figure.dataset.stack + "?part=" + part, { credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok) { throw new Error("stack " + response.status); }
        var reader = response.body.getReader();
        function pump() {
          return reader.read().then(function (chunk) {
            if (chunk.done) { return; }
            take(chunk.value);
            return pump();
          });
        }
        return pump();
      });
  }

  // The frame that draws the first view was asked for (``arrived``) before this one: part 2
  // is asked for right after it is drawn.
  function nextFrame() {
    return new Promise(function (done) { window.requestAnimationFrame(done); });
  }

  // The practice stack: a 512 x 512 CT test pattern in HU (not study data; the same for
  // every rater), five slices, as the server's stack file lays them out (``stacks``):
  // a gradient (-100 to 100) in a body, a lung, a bone ring, bar groups of 1 to 4 px and a
  // low-contrast disc (+8 HU) whose size changes with the slice, with a fixed +-8 HU
  // texture. The right side is the left coarsened to 16 HU steps: something to look for.
  // Windows from the figure (``data-windows``: the study's, then the presets).
  function practiceStack() {
    var size = 512, slices = 5, centre = 2, plane = size * size;
    var windows = practice.dataset.windows.split(" ").map(function (pair) {
      return pair.split(",").map(Number);
    });
    function header() {
      var bytes = new Uint8Array(HEADER), view = new DataView(bytes.buffer);
      for (var i = 0; i < 8; i++) { view.setUint8(i, "MLSTACK1".charCodeAt(i)); }
      [slices, size, size, centre, 0].forEach(function (n, k) {
        view.setUint32(8 + 4 * k, n, true);
      });
      view.setFloat64(32, 1, true); view.setFloat64(40, 0, true);
      windows.forEach(function (w, k) {
        view.setFloat64(48 + 16 * k, w[0], true); view.setFloat64(56 + 16 * k, w[1], true);
      });
      return bytes;
    }
    function value(x, y, s) {
      var bx = (x - 256) / 230, by = (y - 256) / 200;
      if (bx * bx + by * by >= 1) { return -1000; }
      var lx = (x - 150) / 60, ly = (y - 250) / 85;
      if (lx * lx + ly * ly < 1) { return -800; }
      var r = Math.sqrt((x - 256) * (x - 256) + (y - 370) * (y - 370));
      if (r >= 30 && r < 42) { return 1000; }
      var v = -100 + 200 * x / size + (((x * 7919) ^ (y * 104729) ^ (s * 1299709)) & 15) - 8;
      if (y >= 140 && y < 200 && x >= 290 && x < 450) {  // bar groups: 1, 2, 3, 4 px
        var half = 1 + Math.floor((x - 290) / 40);
        if (Math.floor((x - 290 + s) / half) % 2 === 0) { v += 200; }
      }
      var dx = x - 330, dy = y - 290, disc = 16 + 4 * s;
      if (dx * dx + dy * dy < disc * disc) { v += 8; }
      return v;
    }
    function slicePlane(s, side) {
      return function () {
        var codes = new Int16Array(plane);
        for (var y = 0, i = 0; y < size; y++) {
          for (var x = 0; x < size; x++, i++) {
            var v = value(x, y, s);
            codes[i] = side ? Math.round(v / 16) * 16 : v;
          }
        }
        return new Uint8Array(codes.buffer);
      };
    }
    var planes = [];
    [2, 1, 3, 0, 4].forEach(function (s) { planes.push(slicePlane(s, 0), slicePlane(s, 1)); });
    return { header: header, planes: planes };
  }

  // The practice pattern, made once the start page has loaded (its load is not delayed),
  // a plane per task (the page stays responsive), fed to the viewer as a stack arrives:
  // the header and the middle slice, then after the first frame the other slices.
  function practise() {
    var stack = practiceStack(), chunks = [stack.header];
    for (var p = 0; p < stack.planes.length; p++) { chunks.push(stack.planes[p]); }
    function feed(index) {
      take(chunks[index]());
      if (index + 1 < chunks.length) {
        (index === 2 ? nextFrame() : Promise.resolve()).then(function () {
          setTimeout(feed, 0, index + 1);
        });
      }
    }
    var section = practice.closest("[hidden]");  // absent without script
    if (section) { section.hidden = false; }
    feed(0);
  }

  if (practice) {
    if (document.readyState === "complete") { setTimeout(practise, 0); }
    else { window.addEventListener("load", function () { setTimeout(practise, 0); }); }
    return;
  }
  if (!window.fetch || !window.ReadableStream) { fallBack(); return; }
  // Part 1 failed or was cut short: no first view (the fallback); part 2: the first view
  // stays, with the slices that arrived.
  load(1).then(function () {
    if (!bytes || received !== HEADER + 4 * viewer.stack.plane) {
      throw new Error("stack cut off");
    }
    return received < bytes.length ? nextFrame().then(function () {
      return load(2).then(function () {
        if (received !== bytes.length) { throw new Error("stack cut off"); }
      }).catch(function () { viewer.stopped(); });
    }) : null;
  }).catch(fallBack);
})();
"""
