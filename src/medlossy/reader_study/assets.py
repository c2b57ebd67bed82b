"""The rating page's stylesheet and script, served from /static/ (the page's CSP allows no
inline code). Kept as strings so that the package needs no data files. The image viewer's
script and rules are in ``viewer``."""

CSS = """
:root { color-scheme: dark; }
* { box-sizing: border-box; }
body { margin: 0; background: #1b1b1b; color: #d8d8d8;
       font: 16px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; }
header { display: flex; justify-content: space-between; align-items: baseline;
         padding: 10px 24px; background: #111; border-bottom: 1px solid #2c2c2c; }
header .title { font-weight: 600; color: #eee; }
header .progress { font-size: 20px; font-variant-numeric: tabular-nums; color: #fff; }
header .answered { color: #999; }
main.rating { display: flex; flex-direction: column; align-items: center; padding: 12px 24px; }
.question { margin: 4px 0 10px; color: #bbb; }
figure { margin: 0; text-align: center; }
figure img { display: block; height: min(62vh, 620px); max-width: 94vw; object-fit: contain;
             background: #000; image-rendering: auto; }
figcaption { display: flex; justify-content: space-around; color: #888; font-size: 14px;
             margin-top: 4px; text-transform: uppercase; letter-spacing: 0.1em; }
.buttons { display: flex; gap: 18px; margin: 18px 0 8px; }
.buttons button { min-width: 210px; padding: 16px 22px; font: inherit; font-size: 19px;
                  color: #eee; background: #2d2d2d; border: 1px solid #4a4a4a;
                  border-radius: 8px; cursor: pointer; display: flex; flex-direction: column;
                  align-items: center; gap: 6px; }
.buttons button:hover, .buttons button:focus-visible { background: #3a3a3a; border-color: #7a9;
                                                       outline: none; }
.buttons button.chosen { border-color: #6c9; box-shadow: 0 0 0 2px #6c9 inset; }
.keys { font-size: 13px; color: #9a9a9a; }
kbd { border: 1px solid #555; border-bottom-width: 2px; border-radius: 4px; padding: 0 5px;
      background: #222; font: 12px ui-monospace, monospace; color: #ccc; }
nav { display: flex; justify-content: space-between; align-items: center; gap: 24px;
      width: min(94vw, 1100px); margin-top: 8px; color: #888; font-size: 14px; }
a { color: #8cc4ff; }
main.message { max-width: 900px; margin: 10vh auto; padding: 0 24px; }
table { border-collapse: collapse; margin: 16px 0; }
th, td { border-bottom: 1px solid #333; padding: 6px 12px; text-align: left; }
code { font-size: 12px; word-break: break-all; }
main.start h2 { font-size: 18px; margin: 22px 0 4px; color: #eee; }
main.start .status { font-size: 18px; color: #fff; }
a.begin { display: inline-block; padding: 12px 28px; font-size: 19px; color: #eee;
          background: #2d2d2d; border: 1px solid #6c9; border-radius: 8px;
          text-decoration: none; }
a.begin:hover, a.begin:focus-visible { background: #3a3a3a; outline: none; }
"""

JS = """
"use strict";
(function () {
  var form = document.getElementById("answer-form");
  if (!form) { return; }
  // The design's answer keys, from its buttons ("1 ArrowLeft" answers "left"...).
  var keys = {};
  form.querySelectorAll("button[data-keys]").forEach(function (button) {
    button.dataset.keys.split(" ").forEach(function (key) {
      keys[key === "Space" ? " " : key] = button;
    });
  });
  var sent = false;
  // The composite image loaded: in the page, or put there by the viewer's script when the
  // stack cannot be had ("load" does not bubble: caught on its way down).
  var markImage = function () {
    if (!performance.getEntriesByName("medlossy-image-shown", "mark").length) {
      performance.mark("medlossy-image-shown");
    }
  };
  var image = document.getElementById("pair");
  if (image && image.complete) { markImage(); }
  document.addEventListener("load", function (event) {
    if (event.target.id === "pair") { markImage(); }
  }, true);
  // Response time: from the first view (the viewer's first frame, else the image loaded)
  // to the answer; the server checks it against its own clock.
  var firstView = function () {
    var marks = performance.getEntriesByName("medlossy-shown", "mark");
    if (!marks.length) { marks = performance.getEntriesByName("medlossy-image-shown", "mark"); }
    return marks.length ? marks[0].startTime : 0;
  };
  form.addEventListener("submit", function (event) {
    if (sent) { event.preventDefault(); } sent = true;
    document.getElementById("elapsed").value =
      String(Math.max(0, Math.round(performance.now() - firstView())));
  });
  document.addEventListener("keydown", function (event) {
    // Shift + arrows belong to the viewer (window width / level).
    if (event.altKey || event.ctrlKey || event.metaKey || event.shiftKey || event.repeat ||
        sent) { return; }
    var button = keys[event.key];
    if (!button || button.disabled) { return; }  // a flicker not shown yet
    event.preventDefault();
    form.requestSubmit(button);
  });
})();
"""
