// Kiln's page: the VM table follows /api/events (server-sent events), the console is xterm.js
// on /api/vms/NAME/console (a WebSocket). Authenticated by the login cookie; no framework.
"use strict";

const $ = (sel) => document.querySelector(sel);
const history = new Map(); // name -> [{cpu, rss}], the last SPARK samples
const SPARK = 40;
let selected = null;
let socket = null;
let vms = [];

const term = new Terminal({ convertEol: false, fontSize: 13, rows: 28, cols: 90, cursorBlink: true,
  theme: { background: "#000000" } });
term.open($("#terminal"));
term.write("Pick a running VM to see its console.\r\n");
window.kilnTerm = term; // for the browser test

async function api(method, path, body) {
  const opts = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  if (r.status === 401) { location.href = "/login"; throw new Error("logged out"); }
  const text = await r.text();
  const data = text ? JSON.parse(text) : null;
  if (!r.ok) throw new Error((data && data.error) ? `${data.error.message} (${data.error.code})` : r.statusText);
  return data;
}

function say(msg) { $("#message").textContent = msg || ""; }

function uptime(s) {
  if (!s) return "";
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function spark(values, max) {
  const w = 80, h = 18;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("width", w); svg.setAttribute("height", h);
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  const top = Math.max(max, ...values, 1e-9);
  // Newest sample at the right edge.
  const x0 = w - (values.length - 1) * w / (SPARK - 1);
  const pts = values.map((v, i) => `${(x0 + i * w / (SPARK - 1)).toFixed(1)},${(h - 1 - (v / top) * (h - 2)).toFixed(1)}`);
  line.setAttribute("points", pts.join(" "));
  svg.appendChild(line);
  return svg;
}

function cell(tr, content, cls) {
  const td = document.createElement("td");
  if (cls) td.className = cls;
  if (content instanceof Node) td.appendChild(content); else td.textContent = content ?? "";
  tr.appendChild(td);
  return td;
}

function button(label, onclick, disabled) {
  const b = document.createElement("button");
  b.type = "button"; b.textContent = label; b.disabled = !!disabled;
  b.dataset.action = label.toLowerCase();
  b.addEventListener("click", (e) => { e.stopPropagation(); onclick(b); });
  return b;
}

async function act(b, method, path) {
  b.disabled = true; say("");
  try { await api(method, path); } catch (e) { say(e.message); b.disabled = false; }
}

function render() {
  const tbody = $("#vms tbody");
  tbody.replaceChildren();
  $("#empty").hidden = vms.length > 0;
  for (const v of vms) {
    const tr = document.createElement("tr");
    tr.dataset.name = v.name;
    tr.dataset.state = v.state;
    if (v.name === selected) tr.className = "selected";
    cell(tr, v.name);
    const st = cell(tr, v.state, `state state-${v.state}`);
    if (v.error) st.title = v.error;
    cell(tr, uptime(v.uptime_s));
    cell(tr, v.cpus || "");
    cell(tr, v.memory ? `${v.memory} MiB` : "");
    cell(tr, (v.ports || []).join(", "));
    const h = history.get(v.name) || [];
    const cpu = document.createElement("span");
    cpu.append(spark(h.map((x) => x.cpu), 100));
    const cl = document.createElement("span"); cl.className = "spark-label";
    cl.textContent = v.cpu_percent == null ? "" : `${v.cpu_percent.toFixed(0)} %`;
    cpu.append(cl);
    cell(tr, cpu);
    const mem = document.createElement("span");
    mem.append(spark(h.map((x) => x.rss), 1));
    const ml = document.createElement("span"); ml.className = "spark-label";
    ml.textContent = v.rss_mib == null ? "" : `${v.rss_mib.toFixed(0)} MiB`;
    mem.append(ml);
    cell(tr, mem);
    const actions = cell(tr, "", "actions");
    const running = ["starting", "running", "restarting", "stopping"].includes(v.state);
    const n = encodeURIComponent(v.name);
    actions.append(
      button("Start", (b) => act(b, "POST", `/api/vms/${n}/start`), running),
      button("Stop", (b) => act(b, "POST", `/api/vms/${n}/stop`), !running),
      button("Kill", (b) => act(b, "POST", `/api/vms/${n}/kill`), !running),
      button("Remove", (b) => act(b, "DELETE", `/api/vms/${n}`), running),
    );
    tr.addEventListener("click", () => attach(v.name));
    tbody.appendChild(tr);
  }
}

function update(list) {
  vms = list;
  for (const v of vms) {
    if (v.cpu_percent == null && v.rss_mib == null) continue;
    const h = history.get(v.name) || [];
    h.push({ cpu: v.cpu_percent || 0, rss: v.rss_mib || 0 });
    while (h.length > SPARK) h.shift();
    history.set(v.name, h);
  }
  for (const name of history.keys()) if (!vms.some((v) => v.name === name)) history.delete(name);
  render();
  // Follow the selected VM: attach once it is running.
  const sel = vms.find((v) => v.name === selected);
  if (sel && sel.state === "running" && !socket) attach(sel.name);
}

function attach(name) {
  const v = vms.find((x) => x.name === name);
  selected = name;
  $("#console-name").textContent = name;
  render();
  if (socket) { socket.onclose = null; socket.close(); socket = null; }
  term.reset();
  if (!v || v.state !== "running") {
    term.write(`${name} is ${v ? v.state : "gone"}; its console opens once it runs.\r\n`);
    return;
  }
  if (v.foreground) {
    term.write(`${name} runs in the foreground of a \`kiln run\`: its console is that terminal.\r\n`);
    return;
  }
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/api/vms/${encodeURIComponent(name)}/console`);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => { term.focus(); document.body.dataset.console = name; };
  ws.onmessage = (e) => term.write(typeof e.data === "string" ? e.data : new Uint8Array(e.data));
  ws.onclose = () => {
    if (socket === ws) socket = null;
    delete document.body.dataset.console;
    term.write("\r\n[disconnected]\r\n");
  };
  socket = ws;
}

term.onData((d) => { if (socket && socket.readyState === WebSocket.OPEN) socket.send(d); });

$("#create").addEventListener("submit", async (e) => {
  e.preventDefault(); say("");
  const [kind, value] = $("#source").value.split(":");
  const body = { [kind]: value };
  const name = $("#name").value.trim();
  if (name) body.name = name;
  if ($("#cpus").value) body.cpus = Number($("#cpus").value);
  if ($("#memory").value) body.memory = Number($("#memory").value);
  const ports = $("#ports").value.split(",").map((s) => s.trim()).filter(Boolean);
  if (ports.length) body.ports = ports;
  if ($("#share").value.trim()) body.share = $("#share").value.trim();
  const b = $("#create-button");
  b.disabled = true;
  try {
    const vm = await api("POST", "/api/vms", body);
    selected = vm.name;
    $("#console-name").textContent = vm.name;
    term.reset();
    term.write(`${vm.name} is starting…\r\n`);
    $("#name").value = "";
  } catch (err) { say(err.message); }
  b.disabled = false;
});

async function loadSources() {
  const [recipes, images, host] = await Promise.all([api("GET", "/api/recipes"), api("GET", "/api/images"), api("GET", "/api/host")]);
  const sel = $("#source");
  const group = (label, items, kind) => {
    const g = document.createElement("optgroup"); g.label = label;
    for (const it of items) {
      const o = document.createElement("option");
      o.value = `${kind}:${it.name}`;
      o.textContent = it.description ? `${it.name} — ${it.description}` : it.name;
      g.appendChild(o);
    }
    if (items.length) sel.appendChild(g);
  };
  group("Recipes", recipes, "recipe");
  group("Images", images, "image");
  $("#host").textContent = `${host.qemu_version || "QEMU missing"} · ${host.accel}` +
    ` · ${host.memory_available_mib} MiB free`;
  $("#host").title = host.accel_reason || "";
}

function follow() {
  const es = new EventSource("/api/events");
  es.addEventListener("vms", (e) => update(JSON.parse(e.data)));
  es.onopen = () => { $("#live").textContent = "live"; $("#live").className = "badge on"; };
  es.onerror = () => { $("#live").textContent = "reconnecting…"; $("#live").className = "badge"; };
}

loadSources().catch((e) => say(e.message));
follow();
