// Offline checks of the Kubernetes manifests in deploy/k8s. Run by
// check_k8s.sh, which renders each kustomization with `kubectl kustomize`:
//
//   node check_k8s.mjs --repo DIR --work DIR --tsc PATH NAME=RENDERED.yaml ...
//
// 1. Schemas: every rendered object validates against the Kubernetes (or
//    Prometheus Operator) schema of its apiVersion and kind (npm
//    kubernetes-models, @kubernetes-models/prometheus-operator). Those
//    schemas accept fields they do not know, so every object is also
//    type-checked with tsc (`satisfies` its interface), which rejects them.
// 2. Against the code: environment names exist in server/config/config.cc's
//    table (and, with DBPOOL_SERVER_BIN set, in `dbpool-server --help`);
//    container ports equal the port settings; probes ask grpc.health.v1 for
//    a service health_service.cc answers, on the gRPC port (or /readyz and
//    /healthz over mutual TLS, which the kubelet cannot speak); the drain
//    fits terminationGracePeriodSeconds; files come from Secret volumes.
// 3. Between objects: selectors of Services, the PodDisruptionBudget and the
//    Deployment match the pod labels; the headless Service; the autoscaler
//    targets the Deployment and DBPOOL_EXPECTED_REPLICAS is its maxReplicas
//    plus the rollout's surge; the ServiceMonitor reaches the metrics port
//    with job "dbpool" at prometheus.yml's interval; the PrometheusRule holds
//    exactly rules.yml's groups.
// 4. The checks can fail: each is run again on a copy of the last rendering
//    broken on purpose, and must report it.
//
// Prints every failure and exits 1 if there was any.

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import YAML from 'yaml';

const args = { renderings: [] };
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i];
  if (a.startsWith('--') && i + 1 < process.argv.length) args[a.slice(2)] = process.argv[++i];
  else if (/^[\w-]+=/.test(a)) args.renderings.push(a.split(/=(.*)/s).slice(0, 2));
  else usage();
}
function usage() {
  console.error('usage: node check_k8s.mjs --repo DIR --work DIR --tsc PATH NAME=RENDERED.yaml ...');
  process.exit(2);
}
if (!args.repo || !args.work || !args.tsc || !args.renderings.length) usage();

const REPO = path.resolve(args.repo);
const read = (rel) => fs.readFileSync(path.join(REPO, rel), 'utf8');

let failures = 0;
function fail(where, message) {
  failures++;
  console.error(`FAIL [${where}] ${message}`);
}

// ---------------------------------------------------------------------------
// What the code says

// server/config/config.cc: {"ENV", "default", ...} entries of Options().
function configTable() {
  const text = read('server/config/config.cc');
  const body = text.slice(text.indexOf('Options()'));
  const table = new Map();
  for (const m of body.matchAll(/\{"([A-Z][A-Z0-9_]*)",\s*"([^"]*)"/g)) table.set(m[1], m[2]);
  return table;
}

// The same table as `dbpool-server --help` prints it, which proves the
// parse above read the table the binary was built from.
function helpTable(bin) {
  const r = spawnSync(bin, ['--help'], { encoding: 'utf8' });
  if (r.error) throw new Error(`cannot run ${bin}: ${r.error.message}`);
  const table = new Map();
  for (const m of `${r.stdout}${r.stderr}`.matchAll(/\(([A-Z][A-Z0-9_]*), default "([^"]*)"\)/g)) {
    table.set(m[1], m[2]);
  }
  return table;
}

// The grpc.health.v1 service names the server answers (Known() in
// health_service.cc): "" and each `service == "..."` or named constant.
function healthServices() {
  const text = read('server/rpc/health_service.cc');
  const known = text.slice(text.indexOf('bool Known('), text.indexOf('}', text.indexOf('bool Known(')));
  const names = new Set([...known.matchAll(/service == "([^"]*)"/g)].map((m) => m[1]));
  if (/service == kLivenessService/.test(known)) {
    names.add(read('server/rpc/health_service.h').match(/kLivenessService\[\] = "([^"]+)"/)[1]);
  }
  if (/service\.empty\(\)/.test(known)) names.add('');
  return names;
}

const CONFIG = configTable();
const HEALTH = healthServices();
const LIVENESS = read('server/rpc/health_service.h').match(/kLivenessService\[\] = "([^"]+)"/)[1];
const RULES = YAML.parse(read('deploy/prometheus/rules.yml'));
const SCRAPE = YAML.parse(read('deploy/prometheus/prometheus.yml'))
  .scrape_configs.find((c) => c.job_name === 'dbpool');
// The job every rule selects.
const RULE_JOBS = new Set([...read('deploy/prometheus/rules.yml').matchAll(/job="([^"]+)"/g)].map((m) => m[1]));
// Seconds after the drain for the HTTP and metrics listeners to close
// (docs/DEPLOYMENT.md, "Stopping and rolling deploys").
const LISTENER_CLOSE_S = 5;
// The readiness window docs/DEPLOYMENT.md promises: a replica that cannot
// reach PostgreSQL leaves the endpoints within this many seconds.
const READINESS_WINDOW_S = 10;

function preflight() {
  if (CONFIG.size < 20) fail('config.cc', `read only ${CONFIG.size} settings from the Options() table`);
  for (const n of ['DBPOOL_GRPC_PORT', 'DBPOOL_HTTP_PORT', 'DBPOOL_METRICS_PORT', 'DBPOOL_SHUTDOWN_GRACE_MS']) {
    if (!CONFIG.has(n)) fail('config.cc', `${n} is not in the Options() table`);
  }
  if (!HEALTH.size) fail('health_service.cc', 'found no service names in Known()');
  if (!SCRAPE) fail('prometheus.yml', 'no scrape job "dbpool"');
  if (!isDeepStrictEqual([...RULE_JOBS], ['dbpool'])) {
    fail('rules.yml', `rules select jobs ${JSON.stringify([...RULE_JOBS])}, expected only "dbpool"`);
  }
  if (process.env.DBPOOL_SERVER_BIN) {
    const help = helpTable(process.env.DBPOOL_SERVER_BIN);
    if (!isDeepStrictEqual([...help].sort(), [...CONFIG].sort())) {
      fail('config.cc', `the table read from config.cc differs from dbpool-server --help:\n` +
        `  config.cc: ${JSON.stringify([...CONFIG])}\n  --help:    ${JSON.stringify([...help])}`);
    } else {
      console.log(`--- config.cc's table agrees with ${process.env.DBPOOL_SERVER_BIN} --help (${help.size} settings)`);
    }
  }
}

// ---------------------------------------------------------------------------
// Schemas

function modelModule(apiVersion) {
  const [group, version] = apiVersion.includes('/') ? apiVersion.split('/') : ['', apiVersion];
  if (group === 'monitoring.coreos.com') return `@kubernetes-models/prometheus-operator/${group}/${version}`;
  return `kubernetes-models/${group ? `${group}/` : ''}${version}`;
}

async function validateSchemas(name, docs) {
  for (const doc of docs) {
    const where = `${name} ${doc.kind}/${doc.metadata?.name}`;
    let mod;
    try {
      mod = await import(modelModule(doc.apiVersion));
    } catch (e) {
      fail(where, `no schema for apiVersion ${doc.apiVersion}: ${e.message}`);
      continue;
    }
    const Model = mod[doc.kind];
    if (!Model) {
      fail(where, `no schema for kind ${doc.kind} in ${doc.apiVersion}`);
      continue;
    }
    try {
      new Model(doc).validate();
    } catch (e) {
      fail(where, `schema: ${e.message}`);
    }
  }
}

// One TypeScript file holding every object as `satisfies I<Kind>`, and the
// last one again with a field no schema has under @ts-expect-error: if tsc
// stopped rejecting unknown fields, that directive would be unused, an
// error itself.
function typeCheck(renderings) {
  const lines = [];
  const owner = new Map();
  const imports = new Map();
  const emit = (where, text) => {
    for (const l of text.split('\n')) {
      lines.push(l);
      owner.set(lines.length, where);
    }
  };
  const iface = (doc) => {
    const mod = modelModule(doc.apiVersion);
    const alias = `${doc.kind}_${mod.replace(/[^A-Za-z0-9]/g, '_')}`;
    imports.set(alias, `import type { I${doc.kind} as ${alias} } from '${mod}';`);
    return alias;
  };
  let n = 0;
  let last;
  for (const [name, docs] of renderings) {
    for (const doc of docs) {
      emit(`${name} ${doc.kind}/${doc.metadata?.name}`,
        `export const o${n++} = ${JSON.stringify(doc, null, 2)} satisfies ${iface(doc)};`);
      last = doc;
    }
  }
  const broken = structuredClone(last);
  broken.spec = { ...broken.spec, notAField: true };
  emit('self-test', `// @ts-expect-error an unknown field must be rejected\nexport const o${n++} = ${JSON.stringify(broken)} satisfies ${iface(broken)};`);
  const header = [...imports.values()];
  const file = path.join(args.work, 'manifests.ts');
  fs.writeFileSync(file, `${header.join('\n')}\n${lines.join('\n')}\n`);
  const r = spawnSync(args.tsc, ['--noEmit', '--strict', '--moduleResolution', 'bundler', '--module', 'esnext',
    '--target', 'es2022', '--skipLibCheck', '--pretty', 'false', path.basename(file)],
  { cwd: args.work, encoding: 'utf8' });
  if (r.error) {
    fail('tsc', `cannot run ${args.tsc}: ${r.error.message}`);
    return;
  }
  if (r.status === 0) return;
  const out = `${r.stdout}${r.stderr}`.trim();
  for (const l of out.split('\n')) {
    const m = l.match(/\((\d+),\d+\)/);
    const where = m ? owner.get(Number(m[1]) - header.length) ?? 'tsc' : 'tsc';
    fail(where, `type check: ${l}`);
  }
}

// ---------------------------------------------------------------------------
// Checks of one rendering against the code and between its objects.
// Returns nothing; reports through fail().

const one = (docs, kind, where) => {
  const found = docs.filter((d) => d.kind === kind);
  if (found.length !== 1) fail(where, `expected one ${kind}, found ${found.length}`);
  return found[0];
};
const matches = (selector, labels) =>
  !!selector && Object.keys(selector).length > 0 &&
  Object.entries(selector).every(([k, v]) => labels?.[k] === v);
const commandOf = (probe) => (probe?.exec?.command ?? []).join(' ');

function checkRendering(name, docs) {
  const at = (d) => `${name} ${d.kind}/${d.metadata?.name}`;
  const deployment = one(docs, 'Deployment', name);
  const hpa = one(docs, 'HorizontalPodAutoscaler', name);
  const pdb = one(docs, 'PodDisruptionBudget', name);
  const configMap = one(docs, 'ConfigMap', name);
  if (!deployment) return;
  const where = at(deployment);
  const pod = deployment.spec.template;
  const podLabels = pod.metadata?.labels ?? {};
  const container = pod.spec.containers.find((c) => c.name === 'dbpool');
  if (!container) {
    fail(where, 'no container "dbpool"');
    return;
  }

  // Environment: what the server will see, and that it knows every name.
  const env = new Map();
  for (const from of container.envFrom ?? []) {
    const cm = docs.find((d) => d.kind === 'ConfigMap' && d.metadata.name === from.configMapRef?.name);
    if (!cm) fail(where, `envFrom names ConfigMap ${from.configMapRef?.name ?? '?'}, which is not rendered`);
    for (const [k, v] of Object.entries(cm?.data ?? {})) env.set(k, { value: v, from: `ConfigMap ${cm.metadata.name}` });
  }
  for (const e of container.env ?? []) env.set(e.name, { value: e.value, valueFrom: e.valueFrom, from: 'env' });
  // Downward API values only feed other settings through $(NAME).
  const expanded = new Set([...env.values()].flatMap((v) => [...(v.value ?? '').matchAll(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g)].map((m) => m[1])));
  for (const [k, v] of env) {
    if (v.valueFrom?.fieldRef && expanded.has(k)) continue;
    if (!CONFIG.has(k)) fail(where, `${k} (${v.from}) is not a setting of server/config/config.cc`);
  }
  const setting = (k) => (env.has(k) ? env.get(k).value : CONFIG.get(k));
  const intSetting = (k) => Number.parseInt(setting(k), 10);

  // Secrets stay out of ConfigMaps and literals; files come from Secrets.
  const url = env.get('DATABASE_URL');
  if (!url?.valueFrom?.secretKeyRef) fail(where, 'DATABASE_URL must come from a Secret (valueFrom.secretKeyRef)');
  for (const [k, v] of env) {
    if (!k.endsWith('_FILE') || !v.value) continue;
    const mount = (container.volumeMounts ?? []).find((m) => v.value.startsWith(`${m.mountPath.replace(/\/$/, '')}/`));
    const volume = mount && pod.spec.volumes?.find((vol) => vol.name === mount.name);
    const file = mount && v.value.slice(mount.mountPath.replace(/\/$/, '').length + 1);
    if (!volume?.secret) {
      fail(where, `${k}=${v.value} is not in a Secret volume`);
    } else if (volume.secret.items && !volume.secret.items.some((i) => i.path === file)) {
      fail(where, `${k}=${v.value}: Secret volume ${volume.name} has no item with path ${file}`);
    } else if (volume.secret.defaultMode !== undefined && (volume.secret.defaultMode & 0o007) !== 0) {
      fail(where, `${k}: Secret volume ${volume.name} is readable by other users (defaultMode ${volume.secret.defaultMode.toString(8)})`);
    }
  }

  // Ports: the container's, by name, are the server's settings.
  const ports = {
    grpc: { setting: 'DBPOOL_GRPC_PORT' },
    http: { setting: 'DBPOOL_HTTP_PORT' },
    metrics: { setting: 'DBPOOL_METRICS_PORT' },
  };
  for (const [portName, p] of Object.entries(ports)) {
    p.number = intSetting(p.setting);
    const cp = (container.ports ?? []).find((x) => x.name === portName);
    if (!cp) fail(where, `no container port named ${portName}`);
    else if (cp.containerPort !== p.number) {
      fail(where, `container port ${portName} is ${cp.containerPort}, ${p.setting} is ${p.number}`);
    }
    if (!(p.number > 0)) fail(where, `${p.setting} must be a fixed port on Kubernetes, is ${setting(p.setting)}`);
  }
  const isPort = (ref, portName) => ref === portName || ref === ports[portName].number;

  // Probes.
  const ready = container.readinessProbe;
  const live = container.livenessProbe;
  const tls = !!setting('DBPOOL_TLS_CERT_FILE');
  const mutual = !!setting('DBPOOL_TLS_CLIENT_CA_FILE');
  if (!ready || !live) fail(where, 'readiness and liveness probes are both needed');
  else if (!tls) {
    if (!ready.grpc) fail(where, 'the readiness probe must be the kubelet\'s gRPC health probe');
    else {
      if (ready.grpc.port !== ports.grpc.number) fail(where, `readiness probe asks port ${ready.grpc.port}, the gRPC port is ${ports.grpc.number}`);
      if (!HEALTH.has(ready.grpc.service ?? '')) {
        fail(where, `readiness probe asks health of "${ready.grpc.service}", the server answers ${JSON.stringify([...HEALTH])}`);
      }
    }
    // The whole server's health is NOT_SERVING while the database is
    // down: as liveness it would restart every replica during an outage.
    // The "liveness" service (kLivenessService) is the process alone.
    if (!live.grpc || live.grpc.service !== LIVENESS || !HEALTH.has(LIVENESS) ||
        live.grpc.port !== ports.grpc.number) {
      fail(where, `the liveness probe must be gRPC health of "${LIVENESS}" on the gRPC port, is ${JSON.stringify(live)}`);
    }
  } else {
    // The kubelet's gRPC probe has no TLS; its HTTPS probe no client cert.
    if (ready.grpc) fail(where, 'with TLS the gRPC port speaks only TLS: the kubelet\'s gRPC probe cannot reach it');
    if (mutual && (ready.httpGet || live.httpGet)) fail(where, 'with mutual TLS an httpGet probe has no client certificate');
    const byPort = `127.0.0.1:${ports.http.number}`;
    for (const [probe, what, path] of [[ready, 'readiness', '/readyz'], [live, 'liveness', '/healthz']]) {
      if (probe.httpGet) {
        if (probe.httpGet.scheme !== 'HTTPS' || probe.httpGet.path !== path || !isPort(probe.httpGet.port, 'http')) {
          fail(where, `${what} probe must GET ${path} over HTTPS on the HTTP port`);
        }
        continue;
      }
      const cmd = commandOf(probe);
      if (!cmd.includes(`GET ${path} `) || !cmd.includes(byPort)) {
        fail(where, `${what} probe must ask ${path} on ${byPort}: ${cmd || JSON.stringify(probe)}`);
      }
      if (mutual && !(cmd.includes(`-cert ${setting('DBPOOL_TLS_CERT_FILE')}`) && cmd.includes(`-key ${setting('DBPOOL_TLS_KEY_FILE')}`))) {
        fail(where, `${what} probe must present the pod's certificate under mutual TLS: ${cmd}`);
      }
      const t = cmd.match(/timeout (\d+)/);
      if (!t || Number(t[1]) >= (probe.timeoutSeconds ?? 1)) {
        fail(where, `${what} probe's command needs a timeout below timeoutSeconds (${probe.timeoutSeconds ?? 1})`);
      }
    }
  }
  if (ready) {
    const window = (ready.periodSeconds ?? 10) * (ready.failureThreshold ?? 3);
    if (window > READINESS_WINDOW_S) fail(where, `readiness reacts after ${window} s, more than ${READINESS_WINDOW_S} s`);
    if ((ready.timeoutSeconds ?? 1) >= (ready.periodSeconds ?? 10)) fail(where, 'readiness timeoutSeconds must be below periodSeconds');
  }
  if (ready && live) {
    // A slow liveness probe must not kill a pod that readiness has merely
    // taken out of service.
    if ((live.failureThreshold ?? 3) < 3 || (live.periodSeconds ?? 10) < (ready.periodSeconds ?? 10)) {
      fail(where, 'the liveness probe must be slower to act than readiness (failureThreshold >= 3, periodSeconds >= readiness)');
    }
  }

  // Drain: preStop, then SIGTERM and DBPOOL_SHUTDOWN_GRACE_MS, then the
  // listeners close; all of it before the kubelet's SIGKILL.
  const preStop = container.lifecycle?.preStop;
  const sleep = preStop?.sleep?.seconds ??
    (preStop?.exec?.command?.[0] === 'sleep' ? Number(preStop.exec.command[1]) : undefined);
  if (!(sleep > 0)) fail(where, `preStop must sleep so that endpoints go before the drain, is ${JSON.stringify(preStop)}`);
  const graceS = intSetting('DBPOOL_SHUTDOWN_GRACE_MS') / 1000;
  const tgps = pod.spec.terminationGracePeriodSeconds ?? 30;
  if (!(tgps >= (sleep ?? 0) + graceS + LISTENER_CLOSE_S)) {
    fail(where, `terminationGracePeriodSeconds ${tgps} < preStop ${sleep} s + DBPOOL_SHUTDOWN_GRACE_MS ${graceS} s + ${LISTENER_CLOSE_S} s`);
  }

  // Selectors.
  if (!matches(deployment.spec.selector?.matchLabels, podLabels)) fail(where, 'selector does not match the pod labels');
  if (pdb && !matches(pdb.spec.selector?.matchLabels, podLabels)) fail(at(pdb), 'selector does not match the pod labels');
  for (const c of pod.spec.topologySpreadConstraints ?? []) {
    if (!matches(c.labelSelector?.matchLabels, podLabels)) fail(where, `topology spread on ${c.topologyKey} does not select the pods`);
  }
  if (!(pod.spec.topologySpreadConstraints ?? []).some((c) => c.topologyKey === 'kubernetes.io/hostname')) {
    fail(where, 'replicas must be spread over nodes (topologySpreadConstraints on kubernetes.io/hostname)');
  }
  const services = docs.filter((d) => d.kind === 'Service');
  for (const s of services) {
    if (!matches(s.spec.selector, podLabels)) fail(at(s), 'selector does not match the pod labels');
    for (const p of s.spec.ports ?? []) {
      const target = p.targetPort ?? p.port;
      const cp = container.ports.find((x) => x.name === target || x.containerPort === target);
      if (!cp) fail(at(s), `port ${p.name} targets ${target}, which the container does not expose`);
      else if (p.port !== cp.containerPort) fail(at(s), `port ${p.name} is ${p.port}, its container port ${cp.containerPort}`);
    }
  }
  const headless = services.filter((s) => s.spec.clusterIP === 'None');
  if (headless.length !== 1) fail(name, `expected one headless Service (clusterIP: None), found ${headless.length}`);
  // The instance name in transaction ids must be the pod's address behind
  // the headless Service, on the gRPC port.
  const instance = setting('DBPOOL_INSTANCE_NAME');
  if (headless.length === 1) {
    const h = headless[0].metadata.name;
    if (pod.spec.subdomain !== h) fail(where, `subdomain ${pod.spec.subdomain} is not the headless Service ${h}: pod names do not resolve`);
    if (!instance.startsWith(`$(POD_NAME).${h}.`) || !instance.endsWith(`:${ports.grpc.number}`)) {
      fail(where, `DBPOOL_INSTANCE_NAME "${instance}" is not $(POD_NAME).${h}...:${ports.grpc.number}`);
    }
    const podName = env.get('POD_NAME')?.valueFrom?.fieldRef?.fieldPath;
    if (podName !== 'metadata.name') fail(where, 'POD_NAME must come from metadata.name');
  }
  for (const s of headless) {
    if (!s.spec.ports?.some((p) => isPort(p.targetPort, 'grpc'))) fail(at(s), 'the headless Service must expose the gRPC port');
    if (s.spec.publishNotReadyAddresses) fail(at(s), 'publishNotReadyAddresses would send calls to pods that are not ready');
  }
  if (!services.some((s) => s.spec.clusterIP !== 'None' && s.spec.ports?.some((p) => isPort(p.targetPort, 'grpc')) &&
      s.spec.ports?.some((p) => isPort(p.targetPort, 'http')))) {
    fail(name, 'no Service with a cluster IP for gRPC and HTTP');
  }

  // Autoscaling and the connection budget.
  if (hpa) {
    const ref = hpa.spec.scaleTargetRef;
    if (ref.kind !== 'Deployment' || ref.name !== deployment.metadata.name || ref.apiVersion !== deployment.apiVersion) {
      fail(at(hpa), `scaleTargetRef ${JSON.stringify(ref)} is not the Deployment`);
    }
    if (deployment.spec.replicas !== undefined) fail(where, 'spec.replicas would fight the autoscaler on every apply');
    if (pdb && (hpa.spec.minReplicas ?? 1) < 2) fail(at(hpa), 'minReplicas below 2: the PodDisruptionBudget would let the only replica go');
    const surgeSpec = deployment.spec.strategy?.rollingUpdate?.maxSurge ?? '25%';
    const surge = typeof surgeSpec === 'string'
      ? Math.ceil(hpa.spec.maxReplicas * Number.parseInt(surgeSpec, 10) / 100) : surgeSpec;
    const expected = intSetting('DBPOOL_EXPECTED_REPLICAS');
    if (expected !== hpa.spec.maxReplicas + surge) {
      fail(where, `DBPOOL_EXPECTED_REPLICAS is ${setting('DBPOOL_EXPECTED_REPLICAS')}, the most pods holding connections ` +
        `is maxReplicas ${hpa.spec.maxReplicas} + maxSurge ${surge} = ${hpa.spec.maxReplicas + surge}`);
    }
  }
  if (configMap && !/^dbpool-config-[a-z0-9]+$/.test(configMap.metadata.name)) {
    fail(at(configMap), 'the ConfigMap must be generated with a content hash, so that a change rolls the pods');
  }

  // Prometheus Operator objects: none in the base (it must apply without
  // the operator's CRDs), both in an overlay that adds monitoring.
  const monitors = docs.filter((d) => d.kind === 'ServiceMonitor');
  const rules = docs.filter((d) => d.kind === 'PrometheusRule');
  if (name === 'base' && (monitors.length || rules.length)) fail(name, 'the base must not need the Prometheus Operator CRDs');
  if (name !== 'base' && (monitors.length !== 1 || rules.length !== 1)) {
    fail(name, `expected one ServiceMonitor and one PrometheusRule, found ${monitors.length} and ${rules.length}`);
  }
  for (const sm of monitors) {
    const scraped = services.filter((s) => matches(sm.spec.selector?.matchLabels, s.metadata.labels));
    for (const ep of sm.spec.endpoints ?? []) {
      const reaching = scraped.filter((s) => s.spec.ports?.some((p) => p.name === ep.port && isPort(p.targetPort, 'metrics')));
      if (reaching.length !== 1) fail(at(sm), `endpoint port ${ep.port} reaches the metrics port through ${reaching.length} Services, expected 1`);
      if ((ep.path ?? '/metrics') !== SCRAPE?.metrics_path) fail(at(sm), `path ${ep.path}, prometheus.yml scrapes ${SCRAPE?.metrics_path}`);
      if (ep.interval !== SCRAPE?.scrape_interval || ep.scrapeTimeout !== SCRAPE?.scrape_timeout) {
        fail(at(sm), `interval/timeout ${ep.interval}/${ep.scrapeTimeout}, prometheus.yml has ${SCRAPE?.scrape_interval}/${SCRAPE?.scrape_timeout}`);
      }
      for (const s of reaching) {
        const job = sm.spec.jobLabel ? s.metadata.labels?.[sm.spec.jobLabel] : s.metadata.name;
        if (!RULE_JOBS.has(job)) fail(at(sm), `scrapes Service ${s.metadata.name} as job "${job}", the rules select ${JSON.stringify([...RULE_JOBS])}`);
      }
    }
  }
  for (const pr of rules) {
    const names = (groups) => (groups ?? []).flatMap((g) => g.rules.map((r) => `${g.name}/${r.alert ?? r.record}`));
    const have = names(pr.spec.groups);
    const want = names(RULES.groups);
    if (!isDeepStrictEqual(have, want)) {
      fail(at(pr), `rule names differ from rules.yml:\n  missing: ${want.filter((x) => !have.includes(x)).join(', ') || '-'}` +
        `\n  extra: ${have.filter((x) => !want.includes(x)).join(', ') || '-'}\n  (or their order)`);
    } else if (!isDeepStrictEqual(pr.spec.groups, RULES.groups)) {
      fail(at(pr), 'rule groups differ from rules.yml: run deploy/k8s/generate_prometheusrule.py');
    }
  }
}

// ---------------------------------------------------------------------------
// Each check, broken on purpose, must fail. Mutations of a rendering and a
// piece of the message each must produce.

const container = (docs) => docs.find((d) => d.kind === 'Deployment').spec.template.spec.containers[0];
const withKind = (docs, kind) => docs.find((d) => d.kind === kind);
const cmData = (docs) => withKind(docs, 'ConfigMap').data;
const MUTATIONS = [
  // [rendering, what, mutation, a piece of the failure it must cause]
  ['example', 'a container port off its setting', (d) => { container(d).ports[0].containerPort += 1; }, 'is 50052, DBPOOL_GRPC_PORT'],
  ['example', 'a port setting the container does not follow', (d) => { cmData(d).DBPOOL_HTTP_PORT = '8081'; }, 'container port http is 8080, DBPOOL_HTTP_PORT is 8081'],
  ['example', 'an unknown setting', (d) => { cmData(d).DBPOOL_NO_SUCH_SETTING = '1'; }, 'DBPOOL_NO_SUCH_SETTING'],
  ['example', 'a grace longer than the kill timeout', (d) => { cmData(d).DBPOOL_SHUTDOWN_GRACE_MS = '60000'; }, 'terminationGracePeriodSeconds'],
  ['example', 'no preStop', (d) => { delete container(d).lifecycle; }, 'preStop must sleep'],
  ['base', 'whole-server health as liveness', (d) => { container(d).livenessProbe.grpc.service = ''; }, 'gRPC health of "liveness"'],
  ['base', 'readiness on another port', (d) => { container(d).readinessProbe.grpc.port = 8080; }, 'readiness probe asks port 8080'],
  ['base', 'readiness of a service the server does not know', (d) => { container(d).readinessProbe.grpc.service = 'grpc.health.v1.Health'; }, 'readiness probe asks health of'],
  ['base', 'liveness on the metrics port', (d) => { container(d).livenessProbe.grpc.port = 9464; }, 'gRPC health of "liveness" on the gRPC port'],
  ['base', 'Prometheus Operator objects in the base', (d) => { d.push({ apiVersion: 'monitoring.coreos.com/v1', kind: 'ServiceMonitor', metadata: { name: 'x' }, spec: {} }); }, 'must not need the Prometheus Operator'],
  ['example', 'a slow readiness probe', (d) => { container(d).readinessProbe.periodSeconds = 30; }, 'readiness reacts after'],
  ['example', 'a plaintext gRPC probe under TLS', (d) => { container(d).readinessProbe = { grpc: { port: 50051 } }; }, 'cannot reach it'],
  ['example', 'a probe without the client certificate', (d) => {
    container(d).livenessProbe.exec.command = container(d).livenessProbe.exec.command.map((c) => c.replace(/-cert \S+/, ''));
  }, 'present the pod\'s certificate'],
  ['example', 'DATABASE_URL in the ConfigMap', (d) => {
    container(d).env = container(d).env.filter((e) => e.name !== 'DATABASE_URL');
    cmData(d).DATABASE_URL = 'postgresql://app:secret@db/app';
  }, 'DATABASE_URL must come from a Secret'],
  ['example', 'a token file outside the Secret', (d) => { container(d).env.find((e) => e.name === 'DBPOOL_AUTH_TOKENS_FILE').value = '/tokens'; }, 'not in a Secret volume'],
  ['example', 'expected replicas off the autoscaler', (d) => { withKind(d, 'HorizontalPodAutoscaler').spec.maxReplicas += 1; }, 'DBPOOL_EXPECTED_REPLICAS is'],
  ['example', 'a PodDisruptionBudget selecting nothing', (d) => { withKind(d, 'PodDisruptionBudget').spec.selector.matchLabels = { app: 'other' }; }, 'PodDisruptionBudget/dbpool] selector'],
  ['example', 'an instance name nothing resolves', (d) => { d.find((x) => x.kind === 'Deployment').spec.template.spec.subdomain = 'dbpool'; }, 'pod names do not resolve'],
  ['example', 'an instance name on another port', (d) => { container(d).env.find((e) => e.name === 'DBPOOL_INSTANCE_NAME').value += '1'; }, 'DBPOOL_INSTANCE_NAME'],
  ['example', 'a stray downward API variable', (d) => { container(d).env.push({ name: 'NODE_NAME', valueFrom: { fieldRef: { fieldPath: 'spec.nodeName' } } }); }, 'NODE_NAME'],
  ['example', 'a headless Service with a cluster IP', (d) => { delete d.find((x) => x.metadata.name.endsWith('dbpool-headless')).spec.clusterIP; }, 'one headless Service'],
  ['example', 'the ServiceMonitor on a port name that is not there', (d) => { withKind(d, 'ServiceMonitor').spec.endpoints[0].port = 'metric'; }, 'endpoint port metric'],
  ['example', 'the ServiceMonitor scraping the wrong job', (d) => { delete withKind(d, 'ServiceMonitor').spec.jobLabel; d.find((x) => x.kind === 'Service' && x.spec.clusterIP !== 'None').metadata.name = 'db'; }, 'as job "db"'],
  ['example', 'a rule renamed', (d) => { withKind(d, 'PrometheusRule').spec.groups[1].rules[0].alert = 'DbPoolGone'; }, 'missing: dbpool.alerts/DbPoolDown'],
  ['example', 'a rule changed', (d) => { withKind(d, 'PrometheusRule').spec.groups[1].rules[0].for = '5m'; }, 'rule groups differ'],
];

// Runs a check and returns the failures it reported, leaving the count alone.
async function failuresOf(check) {
  const seen = [];
  const before = failures;
  const realError = console.error;
  console.error = (m) => seen.push(String(m));
  try {
    await check();
  } finally {
    console.error = realError;
    failures = before;
  }
  return seen;
}

async function selfTest(renderings) {
  const byName = new Map(renderings);
  for (const [name, what, mutate, expected] of MUTATIONS) {
    if (!byName.has(name)) {
      fail('self-test', `${what}: no rendering ${name}`);
      continue;
    }
    const copy = structuredClone(byName.get(name));
    mutate(copy);
    const seen = await failuresOf(() => checkRendering(name, copy));
    if (!seen.some((m) => m.includes(expected))) {
      fail('self-test', `${name}, ${what}: expected a failure naming "${expected}", got ${seen.length ? seen.join(' | ') : 'none'}`);
    }
  }
  const [name, docs] = renderings[renderings.length - 1];
  const broken = structuredClone(docs);
  container(broken).ports[0].containerPort = 'grpc';
  const seen = await failuresOf(() => validateSchemas(name, broken));
  if (!seen.some((m) => m.includes('containerPort must be integer'))) {
    fail('self-test', `a string containerPort passed schema validation: ${seen.join(' | ') || 'no failure'}`);
  }
  console.log(`--- self-test: ${MUTATIONS.length + 1} deliberately broken copies were each caught (and tsc rejected an unknown field)`);
}

// ---------------------------------------------------------------------------

preflight();
const renderings = args.renderings.map(([name, file]) => {
  const docs = YAML.parseAllDocuments(fs.readFileSync(file, 'utf8')).map((d) => d.toJS());
  return [name, docs.filter((d) => d !== null)];
});
for (const [name, docs] of renderings) {
  await validateSchemas(name, docs);
  checkRendering(name, docs);
  console.log(`--- ${name}: ${docs.length} objects (${docs.map((d) => d.kind).join(', ')})`);
}
typeCheck(renderings);
await selfTest(renderings);
if (failures) {
  console.error(`FAILED: ${failures} problem(s)`);
  process.exit(1);
}
console.log(`OK: ${renderings.map(([n]) => n).join(', ')} validate and agree with the code`);
