"""The report page's style and script, inlined into ``report.html`` (no CDN, no server).

The script reads the rows from the page's JSON block, filters (true class, predicted class, status,
a name search), sorts (file order, name, confidence, foreground share, agreement, any metric; missing
values last) and shows one page of cards at a time; a click enlarges an image with every target's map.
Text is always set with ``textContent`` (never parsed as HTML).
"""

CSS = r"""
*{box-sizing:border-box}
body{margin:0;font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d232a;background:#f4f5f7}
header{padding:12px 20px;background:#1f2933;color:#f5f7fa}
header h1{margin:0;font-size:18px;font-weight:600}
header .sub{opacity:.75;font-size:12px}
main{padding:12px 20px}
details.summary{background:#fff;border:1px solid #d9dde3;border-radius:6px;padding:8px 14px;margin-bottom:12px}
details.summary>summary,details.inner>summary{cursor:pointer;font-weight:600}
details.inner{margin:6px 0 4px}
.cols h3{margin:8px 0 6px;font-size:14px}
.cols{display:flex;flex-wrap:wrap;gap:24px}
.cols>div{min-width:240px;max-width:520px}
table.t{border-collapse:collapse;font-size:12px}
table.t td,table.t th{border-bottom:1px solid #e4e7eb;padding:2px 8px;text-align:left;vertical-align:top}
table.t td.n{text-align:right;font-variant-numeric:tabular-nums}
.scroll{max-height:260px;overflow:auto}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;font-size:12px;margin:0}
dl.kv dt{color:#52606d}
dl.kv dd{margin:0;word-break:break-all}
.bar{display:flex;flex-wrap:wrap;gap:8px;align-items:center;background:#fff;border:1px solid #d9dde3;
 border-radius:6px;padding:8px 12px;position:sticky;top:0;z-index:2}
.bar label{font-size:12px;color:#52606d}
.bar input[type=search]{width:200px}
.bar select,.bar input,.bar button{font:inherit;font-size:13px}
#count{margin-left:auto;font-size:12px;color:#52606d}
.legend{font-size:12px;color:#52606d;margin:8px 0}
#grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(var(--card,200px),1fr));gap:10px}
.card{background:#fff;border:1px solid #d9dde3;border-radius:6px;padding:6px;cursor:pointer;min-width:0}
.card:hover,.card:focus{border-color:#3e7bfa;outline:none;box-shadow:0 0 0 2px #3e7bfa33}
.card.failed{background:#fff5f5;border-color:#f0b4b4;cursor:default}
.views{display:flex;gap:3px}
.views img,.views .ph{flex:1 1 0;min-width:0;width:100%;aspect-ratio:1/1;object-fit:cover;background:#e4e7eb;border-radius:3px}
.cap{font-size:12px;margin-top:4px;overflow:hidden}
.cap .nm{display:block;font-weight:600;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.cap .meta{color:#52606d}
.cap .err{color:#b42318;word-break:break-word}
.pager{display:flex;gap:8px;justify-content:center;align-items:center;margin:14px 0}
#modal{position:fixed;inset:0;background:#0b0f14cc;z-index:10;display:flex;align-items:flex-start;justify-content:center;
 overflow:auto;padding:24px}
#modal[hidden]{display:none}
#modal .box{background:#fff;border-radius:8px;padding:14px 18px;max-width:min(1500px,96vw)}
#modal h2{margin:0 30px 6px 0;font-size:16px;word-break:break-all}
#m-close{float:right;font-size:20px;border:0;background:none;cursor:pointer}
#m-info{font-size:12px;color:#3e4c59;margin-bottom:8px}
.mrow{display:flex;gap:8px;align-items:flex-start;margin:6px 0;flex-wrap:wrap}
.mrow .lab{width:110px;font-size:12px;font-weight:600;padding-top:4px}
figure{margin:0}
figure img{max-width:min(360px,40vw);max-height:360px;display:block;border-radius:3px}
figcaption{font-size:12px;color:#3e4c59}
svg text{font-size:10px;fill:#52606d}
"""

JS = r"""
(function () {
"use strict";
var D = JSON.parse(document.getElementById("camkit-data").textContent);
var R = D.rows, M = D.methods, C = D.classes;
var LOW = R.map(function (r) { return r[0].toLowerCase(); });
var S = {q: "", t: -1, p: -1, status: "all", sort: "order", dir: -1, page: 0, size: D.pageSize, masks: false};
var shown = [], current = -1;
function $(id) { return document.getElementById(id); }
function el(tag, cls, text) {
  var e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}
function src(key, view) { return D.files + "/" + key.slice(0, 2) + "/" + key + "." + view + ".jpg"; }
function cname(i) { return i >= 0 && i < C.length ? C[i] : "?"; }
function pct(v) { return v === null ? "n/a" : (100 * v).toFixed(1) + "%"; }
function num(v) { return v === null ? "n/a" : (Math.abs(v) >= 100 ? v.toFixed(0) : v.toPrecision(3)); }
function value(r) {
  switch (S.sort) {
    case "conf": return r[4];
    case "fg": return r[5];
    case "agree": return r[6];
    default: return r[7][+S.sort.slice(2)];
  }
}
function apply() {
  var q = S.q.toLowerCase(), out = [];
  for (var i = 0; i < R.length; i++) {
    var r = R[i];
    if (S.status === "ok" ? !r[1] : S.status === "failed" ? r[1] : false) continue;
    if (S.t >= 0 && r[2].indexOf(S.t) < 0) continue;
    if (S.p >= 0 && r[3][0] !== S.p) continue;
    if (q && LOW[i].indexOf(q) < 0) continue;
    out.push(i);
  }
  var d = S.dir;
  if (S.sort === "name") {
    out.sort(function (a, b) { return LOW[a] < LOW[b] ? -d : LOW[a] > LOW[b] ? d : a - b; });
  } else if (S.sort !== "order") {
    var v = new Float64Array(R.length);
    out.forEach(function (i) { var x = value(R[i]); v[i] = x === null ? NaN : x; });
    out.sort(function (a, b) {
      var x = v[a], y = v[b];
      if (x !== x) return y !== y ? a - b : 1;   // missing values last, either direction
      if (y !== y) return -1;
      return x < y ? -d : x > y ? d : a - b;
    });
  }
  shown = out;
  S.page = 0;
  render();
}
function metaLine(r) {
  var parts = [];
  if (r[2].length) parts.push("true: " + r[2].map(cname).join(", "));
  if (r[3].length) parts.push("pred: " + cname(r[3][0]) + (r[4] !== null ? " " + (D.confIsProb ? pct(r[4]) : num(r[4])) : ""));
  if (r[5] !== null) parts.push("fg " + pct(r[5]));
  if (r[6] !== null) parts.push("agree " + r[6].toFixed(2));
  return parts.join(" \u00b7 ");
}
function card(i) {
  var r = R[i], c = el("div", r[1] ? "card" : "card failed");
  c.dataset.i = i;
  c.tabIndex = 0;
  var vs = el("div", "views");
  if (r[1]) {
    for (var m = 0; m < M.length; m++) {
      if (r[9][m] > 0) {
        var im = el("img");
        im.loading = "lazy"; im.decoding = "async"; im.alt = M[m]; im.title = M[m];
        im.src = src(r[8], "m" + m);
        vs.appendChild(im);
      } else {
        vs.appendChild(el("div", "ph"));
      }
    }
    if (S.masks && r[10]) {
      var mk = el("img");
      mk.loading = "lazy"; mk.alt = "pseudo-mask"; mk.title = "pseudo-mask"; mk.className = "mask";
      mk.src = src(r[8], "mask");
      vs.appendChild(mk);
    }
    c.appendChild(vs);
  }
  var cap = el("div", "cap");
  cap.appendChild(el("span", "nm", r[0])).title = r[0];
  cap.appendChild(el("span", "meta", metaLine(r)));
  if (r[13]) cap.appendChild(el("div", "err", r[13]));
  c.appendChild(cap);
  return c;
}
function render() {
  var g = $("grid"), pages = Math.max(1, Math.ceil(shown.length / S.size));
  S.page = Math.min(Math.max(0, S.page), pages - 1);
  var frag = document.createDocumentFragment();
  shown.slice(S.page * S.size, (S.page + 1) * S.size).forEach(function (i) { frag.appendChild(card(i)); });
  g.textContent = "";
  g.appendChild(frag);
  $("count").textContent = shown.length + " of " + R.length + " images";
  $("pageno").textContent = "page " + (S.page + 1) + " of " + pages;
  $("prev").disabled = S.page === 0;
  $("next").disabled = S.page >= pages - 1;
  document.documentElement.style.setProperty("--card", (100 + 110 * (M.length + (S.masks ? 1 : 0))) + "px");
}
function figure(url, caption, link) {
  var f = el("figure"), im = el("img");
  im.src = url; im.alt = caption; im.decoding = "async";
  f.appendChild(im);
  var fc = el("figcaption", null, caption);
  if (link) {
    var a = el("a", null, " (original)");
    a.href = link; a.target = "_blank";
    fc.appendChild(a);
  }
  f.appendChild(fc);
  return f;
}
function open(i) {
  var r = R[i];
  if (!r[1]) return;
  current = i;
  $("m-title").textContent = r[0];
  var info = metaLine(r), mets = D.metrics.map(function (n, k) { return n + " " + num(r[7][k]); });
  $("m-info").textContent = info + (mets.length ? " \u00b7 " + mets.join(" \u00b7 ") : "")
    + (r[14] ? " \u00b7 notes: " + r[14] : "");
  var box = $("m-views");
  box.textContent = "";
  if (r[11] || r[10]) {
    var top = el("div", "mrow");
    top.appendChild(el("div", "lab", "image"));
    if (r[11]) top.appendChild(figure(src(r[8], "photo"), "photo"));
    if (r[10]) top.appendChild(figure(src(r[8], "maskL"), "pseudo-mask (foreground " + pct(r[5]) + ")"));
    box.appendChild(top);
  }
  for (var m = 0; m < M.length; m++) {
    var row = el("div", "mrow");
    row.appendChild(el("div", "lab", M[m]));
    for (var k = 0; k < r[9][m]; k++) {
      var links = r[12] && r[12][m];
      row.appendChild(figure(src(r[8], "m" + m + "k" + k), cname(r[15][m][k]), links ? links[k] : null));
    }
    if (!r[9][m]) row.appendChild(el("div", null, "no maps"));
    box.appendChild(row);
  }
  $("modal").hidden = false;
  $("m-close").focus();
}
function close() { $("modal").hidden = true; current = -1; }
function step(d) {
  var at = shown.indexOf(current);
  if (at >= 0 && at + d >= 0 && at + d < shown.length) open(shown[at + d]);
}
function on(id, ev, fn) { $(id).addEventListener(ev, fn); }
on("q", "input", function (e) { S.q = e.target.value; apply(); });
on("f-true", "change", function (e) { S.t = +e.target.value; apply(); });
on("f-pred", "change", function (e) { S.p = +e.target.value; apply(); });
on("f-status", "change", function (e) { S.status = e.target.value; apply(); });
on("sort", "change", function (e) { S.sort = e.target.value; apply(); });
on("dir", "change", function (e) { S.dir = +e.target.value; apply(); });
on("size", "change", function (e) { S.size = +e.target.value; render(); });
on("masks", "change", function (e) { S.masks = e.target.checked; render(); });
on("prev", "click", function () { S.page--; render(); window.scrollTo(0, 0); });
on("next", "click", function () { S.page++; render(); window.scrollTo(0, 0); });
on("grid", "click", function (e) {
  var c = e.target.closest(".card");
  if (c) open(+c.dataset.i);
});
on("grid", "keydown", function (e) {
  var c = e.target.closest(".card");
  if (c && e.key === "Enter") open(+c.dataset.i);
});
on("m-close", "click", close);
on("modal", "click", function (e) { if (e.target === $("modal")) close(); });
document.addEventListener("keydown", function (e) {
  if ($("modal").hidden) return;
  if (e.key === "Escape") close();
  else if (e.key === "ArrowRight") step(1);
  else if (e.key === "ArrowLeft") step(-1);
});
$("size").value = String(S.size);
apply();
document.body.dataset.ready = "1";
})();
"""
