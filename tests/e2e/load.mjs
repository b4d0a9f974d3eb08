// The web API's load check (scripts/bench-web.sh runs it against a fresh `kiln serve`): 200
// concurrent reads of the API, in bursts, while 5 VMs boot from recipes/rescue; prints latency
// percentiles and failures, then stops and removes the VMs. Bounded: it stops after the VMs are
// ready and at least ROUNDS reads per client, or after LIMIT_MS.
const url = process.env.KILN_URL, token = process.env.KILN_TOKEN;
if (!url || !token) { console.error("KILN_URL and KILN_TOKEN are needed"); process.exit(2); }
const CLIENTS = 200, VMS = 5, ROUNDS = 20, LIMIT_MS = 240_000;
const auth = { Authorization: `Bearer ${token}` };
const names = Array.from({ length: VMS }, (_, i) => `load${process.pid % 10000}-${i}`);

async function api(method, path, body) {
  const r = await fetch(url + path, { method, headers: { ...auth, "Content-Type": "application/json" },
    body: body && JSON.stringify(body) });
  const text = await r.text();
  return { status: r.status, body: text ? JSON.parse(text) : null };
}

const latencies = [];
let failures = 0, failureSample = "";
const start = Date.now();
const paths = ["/api/vms", ...names.map((n) => `/api/vms/${n}`), "/api/host", "/api/recipes"];

for (const n of names) {
  const r = await api("POST", "/api/vms", { recipe: "rescue", name: n, memory: 96, ready_timeout: 180 });
  if (r.status !== 202) { console.error(`create ${n}: ${r.status} ${JSON.stringify(r.body)}`); process.exit(1); }
}
let ready = false, readyMs = null;
const watcher = (async () => {
  while (!ready && Date.now() - start < LIMIT_MS) {
    const r = await api("GET", "/api/vms");
    const states = r.body.filter((v) => names.includes(v.name)).map((v) => v.state);
    if (states.some((s) => s === "failed")) { console.error(JSON.stringify(r.body)); break; }
    if (states.length === VMS && states.every((s) => s === "running")) { ready = true; readyMs = Date.now() - start; }
    else await new Promise((res) => setTimeout(res, 250));
  }
})();

// Bursts: CLIENTS requests at once, then the next burst as soon as every answer is in, until
// the VMs are ready and at least ROUNDS bursts were sent.
let bursts = 0;
while ((bursts < ROUNDS || !ready) && Date.now() - start < LIMIT_MS) {
  await Promise.all(Array.from({ length: CLIENTS }, async (_, id) => {
    const path = paths[(id + bursts) % paths.length];
    const t = performance.now();
    try {
      const r = await fetch(url + path, { headers: auth });
      await r.arrayBuffer();
      // A VM not listed yet is a correct answer (404 vm_not_found) only for its own route.
      if (!(r.status === 200 || (r.status === 404 && path.startsWith("/api/vms/")))) {
        failures++; failureSample ||= `${path}: ${r.status}`;
      }
    } catch (e) { failures++; failureSample ||= `${path}: ${e}`; }
    latencies.push(performance.now() - t);
  }));
  bursts++;
}
await watcher;

latencies.sort((a, b) => a - b);
const pct = (p) => latencies[Math.min(latencies.length - 1, Math.floor(p / 100 * latencies.length))].toFixed(1);
console.log(`${bursts} bursts of ${CLIENTS} concurrent reads, VMs booting ${VMS}, requests ${latencies.length}, failed ${failures}${failureSample ? ` (first: ${failureSample})` : ""}`);
console.log(`latency ms: p50 ${pct(50)} p90 ${pct(90)} p99 ${pct(99)} max ${latencies.at(-1).toFixed(1)}`);
console.log(`all ${VMS} VMs ready after ${readyMs === null ? "(not ready)" : `${(readyMs / 1000).toFixed(1)} s`}; wall ${((Date.now() - start) / 1000).toFixed(1)} s`);

for (const n of names) {
  const s = await api("POST", `/api/vms/${n}/kill`);
  if (s.status === 200 && s.body.state !== "stopped") await api("DELETE", `/api/vms/${n}`);
}
process.exit(failures === 0 && ready ? 0 : 1);
