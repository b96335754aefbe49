// Offline checks of dbpool's operator artefacts. Run by check_dashboard.sh:
//
//   node check_dashboard.mjs --repo DIR --work DIR [--tsc PATH] [--promtool PATH]
//
// 1. dashboards/dbpool.json type-checks against @grafana/schema (the
//    Dashboard type, and each panel's options/custom field config against
//    its panel plugin's types), via `satisfies` and tsc.
// 2. Its shape: the datasource and instance variables, every panel and
//    target on ${datasource}, every selector filtered by $instance, unique
//    ids, no overlapping panels, every exported metric shown somewhere.
// 3. Every PromQL expression in the dashboard, deploy/prometheus/rules.yml
//    and deploy/prometheus/rules_test.yml names only metric families from
//    tests/observability/exported_metrics.txt (histograms as _bucket, _sum,
//    _count), recording rules defined in rules.yml, or Prometheus' own `up`,
//    and only the labels those families carry (plus job, instance, le).
// 4. The dashboard's expressions parse: they are written, with Grafana's
//    variables substituted, as recording rules that `promtool check rules`
//    reads.
// 5. Every alert has a severity, summary, description and a runbook_url
//    whose anchor is a heading in docs/DATABASE_POOL_MONITORING.md; every
//    alert has a firing and a not-firing case in rules_test.yml; the run-book
//    mentions every exported metric family.
// 6. prometheus.yml scrapes job "dbpool" every 5s and loads rules.yml; the
//    Grafana provisioning files have a Prometheus data source (its
//    timeInterval = the scrape interval) and a file provider.
//
// Prints every failure and exits 1 if there was any.

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

// ---------------------------------------------------------------------------
// Arguments and failure collection

const args = {};
for (let i = 2; i < process.argv.length; i += 2) {
  const k = process.argv[i];
  if (!k.startsWith('--') || i + 1 >= process.argv.length) usage();
  args[k.slice(2)] = process.argv[i + 1];
}
function usage() {
  console.error('usage: node check_dashboard.mjs --repo DIR --work DIR [--tsc PATH] [--promtool PATH]');
  process.exit(2);
}
if (!args.repo || !args.work) usage();

const REPO = path.resolve(args.repo);
const WORK = path.resolve(args.work);
const P = {
  dashboard: 'dashboards/dbpool.json',
  rules: 'deploy/prometheus/rules.yml',
  rulesTest: 'deploy/prometheus/rules_test.yml',
  metrics: 'tests/observability/exported_metrics.txt',
  runbook: 'docs/DATABASE_POOL_MONITORING.md',
  prometheus: 'deploy/prometheus/prometheus.yml',
  datasources: 'dashboards/provisioning/datasources.yaml',
  providers: 'dashboards/provisioning/dashboards.yaml',
};
const read = (rel) => fs.readFileSync(path.join(REPO, rel), 'utf8');

const failures = [];
const fail = (where, msg) => failures.push(`${where}: ${msg}`);
const section = (title) => console.log(`--- ${title}`);

// ---------------------------------------------------------------------------
// exported_metrics.txt

function loadExported() {
  const families = new Map(); // name -> {type, labels:Set}
  read(P.metrics).split('\n').forEach((line, n) => {
    const s = line.replace(/#.*/, '').trim();
    if (!s) return;
    const [name, type, labels = '', flag, extra] = s.split(/\s+/);
    if (extra !== undefined || (flag !== undefined && flag !== 'replicas') ||
        !/^[a-zA-Z_][a-zA-Z0-9_]*$/.test(name) ||
        !['gauge', 'counter', 'histogram'].includes(type)) {
      fail(`${P.metrics}:${n + 1}`, `expected "NAME gauge|counter|histogram [LABEL,...] [replicas]", got "${s}"`);
      return;
    }
    if (families.has(name)) fail(`${P.metrics}:${n + 1}`, `${name} listed twice`);
    // ?LABEL: only on read replicas' series; a query may name it all the same.
    families.set(name, { type, labels: new Set(labels ? labels.split(',').map((l) => l.replace(/^\?/, '')) : []) });
  });
  return families;
}

// ---------------------------------------------------------------------------
// A reader for the subset of YAML that the Prometheus rule files use: block
// mappings and sequences, plain and quoted scalars, |/> block scalars, and
// the empty flow collections [] and {}. Anything else is reported, never
// guessed at. promtool reads the same files with a real YAML parser, and the
// rule counts are compared, so a misread cannot pass silently.

function parseYamlSubset(text, file) {
  const lines = text.split('\n');
  let i = 0;
  const err = (msg) => {
    throw new Error(`${file}:${i + 1}: ${msg} (this checker reads only a subset of YAML)`);
  };
  const indentOf = (s) => s.match(/^ */)[0].length;
  const isBlank = (s) => /^\s*(#.*)?$/.test(s);
  const skipBlank = () => { while (i < lines.length && isBlank(lines[i])) i++; };
  const isSeqItem = (s) => s === '-' || s.startsWith('- ');
  const KEY = /^([A-Za-z_][\w.\-]*|"[^"]*"|'[^']*')\s*:(?:\s+(.*))?$/;

  function scalar(raw) {
    const s = raw.trim();
    if (s.startsWith('"')) {
      const m = s.match(/^"((?:[^"\\]|\\.)*)"\s*(#.*)?$/);
      if (!m) err(`bad double-quoted scalar ${s}`);
      return JSON.parse(`"${m[1]}"`);
    }
    if (s.startsWith("'")) {
      const m = s.match(/^'((?:[^']|'')*)'\s*(#.*)?$/);
      if (!m) err(`bad single-quoted scalar ${s}`);
      return m[1].replace(/''/g, "'");
    }
    if (/^\[\s*\]\s*(#.*)?$/.test(s)) return [];
    if (/^\{\s*\}\s*(#.*)?$/.test(s)) return {};
    if (/^[[{&*!|>%@`]/.test(s)) err(`unsupported scalar or flow collection: ${s}`);
    const plain = s.replace(/\s+#.*$/, '');
    if (plain === '~' || plain === 'null') return null;
    return plain;
  }

  function blockScalar(header, parentIndent) {
    const style = header[0];
    const chomp = header[1] === '-' ? 'strip' : header[1] === '+' ? 'keep' : 'clip';
    const body = [];
    let contentIndent = -1;
    while (i < lines.length) {
      const l = lines[i];
      if (l.trim() === '') { body.push(''); i++; continue; }
      const ind = indentOf(l);
      if (ind <= parentIndent) break;
      if (contentIndent < 0) contentIndent = ind;
      if (ind < contentIndent) err('block scalar line indented less than its first line');
      body.push(l.slice(contentIndent));
      i++;
    }
    let trailing = 0;
    while (body.length && body[body.length - 1] === '') { body.pop(); trailing++; }
    let s = style === '|' ? body.join('\n') : body.join(' ').replace(/ {2,}/g, ' ');
    if (chomp === 'clip' && body.length) s += '\n';
    if (chomp === 'keep') s += '\n'.repeat(trailing + 1);
    return s;
  }

  function node(minIndent) {
    skipBlank();
    if (i >= lines.length) return null;
    const ind = indentOf(lines[i]);
    if (ind < minIndent) return null;
    return isSeqItem(lines[i].slice(ind)) ? seq(ind) : map(ind);
  }

  function seq(ind) {
    const out = [];
    for (;;) {
      skipBlank();
      if (i >= lines.length) break;
      const li = indentOf(lines[i]);
      if (li < ind) break;
      if (li > ind) err('unexpected indentation in a sequence');
      const content = lines[i].slice(li);
      if (!isSeqItem(content)) break;
      const rest = content.slice(1);
      if (rest.trim() === '' || rest.trim().startsWith('#')) {
        i++;
        out.push(node(ind + 1));
        continue;
      }
      const itemIndent = li + 1 + indentOf(rest);
      if (KEY.test(rest.trim())) {
        lines[i] = ' '.repeat(itemIndent) + rest.trim();
        out.push(map(itemIndent));
      } else {
        out.push(scalar(rest));
        i++;
      }
    }
    return out;
  }

  function map(ind) {
    const out = {};
    for (;;) {
      skipBlank();
      if (i >= lines.length) break;
      const li = indentOf(lines[i]);
      if (li < ind) break;
      if (li > ind) err('unexpected indentation (multi-line plain scalars are not supported)');
      const content = lines[i].slice(li);
      if (isSeqItem(content)) break;
      const m = content.match(KEY);
      if (!m) err(`expected "key: value", got: ${content}`);
      const key = m[1].replace(/^["']|["']$/g, '');
      const rest = m[2] ?? '';
      if (Object.prototype.hasOwnProperty.call(out, key)) err(`duplicate key ${key}`);
      i++;
      if (rest === '' || rest.startsWith('#')) {
        skipBlank();
        const next = i < lines.length ? lines[i] : '';
        const nind = indentOf(next);
        if (i < lines.length && (nind > li || (nind === li && isSeqItem(next.slice(nind))))) {
          out[key] = node(nind);
        } else {
          out[key] = null;
        }
      } else if (/^[|>][-+]?\s*(#.*)?$/.test(rest)) {
        out[key] = blockScalar(rest, li);
      } else {
        out[key] = scalar(rest);
      }
    }
    return out;
  }

  const doc = node(0);
  skipBlank();
  if (i < lines.length) err('unparsed content');
  return doc;
}

// ---------------------------------------------------------------------------
// PromQL: a scanner that finds metric selectors (name + label matchers),
// grouping labels (by/without/on/ignoring/group_left/group_right) and
// function names. It does not evaluate anything; promtool parses for real.

const PROMQL_FUNCTIONS = new Set(`abs absent absent_over_time avg_over_time ceil changes clamp clamp_max
  clamp_min count_over_time day_of_month day_of_week day_of_year days_in_month delta deriv exp floor
  histogram_count histogram_sum histogram_fraction histogram_quantile holt_winters hour idelta increase
  irate label_join label_replace last_over_time ln log10 log2 max_over_time min_over_time minute month
  predict_linear present_over_time quantile_over_time rate resets round scalar sgn sort sort_desc sqrt
  stddev_over_time stdvar_over_time sum_over_time time timestamp vector year acos acosh asin asinh atan
  atanh cos cosh sin sinh tan tanh deg rad pi`.split(/\s+/));
const PROMQL_AGGREGATIONS = new Set(
  'sum min max avg group stddev stdvar count count_values bottomk topk quantile'.split(' '));
const PROMQL_KEYWORDS = new Set(
  'and or unless by without on ignoring group_left group_right bool offset atan2 inf nan start end'.split(' '));
const GROUPING = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right']);

function scanPromQL(expr) {
  const selectors = []; // {name, matchers:[{label, op, value}]}
  const grouping = [];
  const functions = [];
  const problems = [];
  let i = 0;
  const n = expr.length;
  const ws = () => { while (i < n && /\s/.test(expr[i])) i++; };
  const readString = () => {
    const q = expr[i++];
    let s = '';
    while (i < n && expr[i] !== q) {
      if (expr[i] === '\\' && q !== '`') { s += expr[i + 1]; i += 2; } else s += expr[i++];
    }
    if (i >= n) problems.push('unterminated string');
    i++;
    return s;
  };
  const readMatchers = () => {
    i++; // {
    const ms = [];
    for (;;) {
      ws();
      if (i >= n) { problems.push('unterminated {'); break; }
      if (expr[i] === '}') { i++; break; }
      if (expr[i] === ',') { i++; continue; }
      const m = expr.slice(i).match(/^([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*/);
      if (!m) { problems.push(`cannot read label matcher at "${expr.slice(i, i + 20)}"`); i = n; break; }
      i += m[0].length;
      if (!'"\'`'.includes(expr[i])) { problems.push(`label ${m[1]} has no quoted value`); i = n; break; }
      ms.push({ label: m[1], op: m[2], value: readString() });
    }
    return ms;
  };
  const skipBrackets = () => {
    let depth = 0;
    do {
      if (expr[i] === '[') depth++;
      else if (expr[i] === ']') depth--;
      i++;
    } while (i < n && depth > 0);
  };
  while (i < n) {
    const c = expr[i];
    if (/\s/.test(c)) { i++; continue; }
    if (c === '#') { while (i < n && expr[i] !== '\n') i++; continue; }
    if (c === '"' || c === "'" || c === '`') { readString(); continue; }
    if (c === '[') { skipBrackets(); continue; }
    if (c === '{') { // selector without a metric name
      const ms = readMatchers();
      const nm = ms.find((m) => m.label === '__name__' && m.op === '=');
      if (nm) selectors.push({ name: nm.value, matchers: ms.filter((m) => m !== nm) });
      else problems.push('selector without a metric name');
      continue;
    }
    const num = expr.slice(i).match(/^(0[xX][0-9a-fA-F]+|(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?)/);
    if (num) { i += num[0].length; continue; }
    const id = expr.slice(i).match(/^[a-zA-Z_:][a-zA-Z0-9_:]*/);
    if (!id) { i++; continue; } // operator or punctuation
    const word = id[0];
    i += word.length;
    const save = i;
    ws();
    if (PROMQL_KEYWORDS.has(word.toLowerCase())) {
      if (word === 'offset') {
        const d = expr.slice(i).match(/^-?(\d+[smhdwy]+)+/);
        if (d) i += d[0].length;
      } else if (GROUPING.has(word) && expr[i] === '(') {
        const close = expr.indexOf(')', i);
        if (close < 0) { problems.push(`unclosed ${word} (`); break; }
        expr.slice(i + 1, close).split(',').map((s) => s.trim()).filter(Boolean)
          .forEach((l) => grouping.push(l));
        i = close + 1;
      } else {
        i = save;
      }
      continue;
    }
    if (expr[i] === '(') {
      functions.push(word);
      if (!PROMQL_FUNCTIONS.has(word) && !PROMQL_AGGREGATIONS.has(word)) {
        problems.push(`unknown function ${word}()`);
      }
      continue;
    }
    if (PROMQL_AGGREGATIONS.has(word) && /^(by|without)\b/.test(expr.slice(i))) continue;
    const sel = { name: word, matchers: [] };
    if (expr[i] === '{') sel.matchers = readMatchers();
    else i = save;
    selectors.push(sel);
  }
  return { selectors, grouping, functions, problems };
}

// ---------------------------------------------------------------------------
// Metric and label checks shared by dashboard and rules

const PROMETHEUS_SERIES = new Map([
  ['up', new Set()], ['scrape_duration_seconds', new Set()], ['scrape_samples_scraped', new Set()],
]);
const TARGET_LABELS = ['job', 'instance'];

function makeChecker(exported, recorded) {
  const used = new Set();
  // Labels a selector of `name` may use, or an error string.
  function labelsOf(name) {
    if (name.includes(':')) {
      if (!recorded.has(name)) return `recording rule ${name} is not defined in ${P.rules}`;
      return new Set([...recorded.get(name), ...TARGET_LABELS]);
    }
    if (PROMETHEUS_SERIES.has(name)) return new Set(TARGET_LABELS);
    const f = exported.get(name);
    if (f) {
      if (f.type === 'histogram') {
        return `${name} is a histogram: it has no series of its own; use ${name}_bucket, _sum or _count`;
      }
      used.add(name);
      return new Set([...f.labels, ...TARGET_LABELS]);
    }
    const m = name.match(/^(.*)_(bucket|sum|count)$/);
    if (m && exported.get(m[1])?.type === 'histogram') {
      used.add(m[1]);
      const ls = new Set([...exported.get(m[1]).labels, ...TARGET_LABELS]);
      if (m[2] === 'bucket') ls.add('le');
      return ls;
    }
    return `unknown metric ${name} (not in ${P.metrics})`;
  }
  // Checks one expression; returns the scan for further checks.
  function check(where, expr) {
    const scan = scanPromQL(expr);
    scan.problems.forEach((p) => fail(where, `${p} in: ${expr.trim()}`));
    if (scan.selectors.length === 0 && !/^\s*[\d.]+\s*$/.test(expr)) {
      fail(where, `no metric selector found in: ${expr.trim()}`);
    }
    const allowedGrouping = new Set(['le']);
    for (const s of scan.selectors) {
      const ls = labelsOf(s.name);
      if (typeof ls === 'string') { fail(where, ls); continue; }
      ls.forEach((l) => allowedGrouping.add(l));
      for (const m of s.matchers) {
        if (!ls.has(m.label)) {
          fail(where, `${s.name} has no label "${m.label}" (has: ${[...ls].sort().join(', ')})`);
        }
      }
    }
    for (const g of scan.grouping) {
      if (!allowedGrouping.has(g)) {
        fail(where, `grouping label "${g}" is on none of the selected metrics`);
      }
    }
    return scan;
  }
  return { check, used };
}

// ---------------------------------------------------------------------------
// Rules, rule tests, run-book

function githubSlug(heading) {
  return heading.trim().toLowerCase().replace(/[^\p{L}\p{N}\s_-]/gu, '').replace(/\s/g, '-');
}

function loadRunbookAnchors() {
  const anchors = new Set();
  let inFence = false;
  for (const line of read(P.runbook).split('\n')) {
    if (/^\s*```/.test(line)) inFence = !inFence;
    if (inFence) continue;
    const h = line.match(/^#{1,6}\s+(.*?)\s*#*\s*$/);
    if (h) anchors.add(githubSlug(h[1]));
    for (const a of line.matchAll(/<a\s+(?:id|name)="([^"]+)"/g)) anchors.add(a[1]);
  }
  return anchors;
}

function loadRules() {
  const doc = parseYamlSubset(read(P.rules), P.rules);
  const rules = [];
  for (const g of doc?.groups ?? []) {
    for (const r of g.rules ?? []) rules.push({ group: g.name, ...r });
  }
  return rules;
}

// Labels a recording rule's output can carry: an upper bound (the labels of
// everything it selects, or its grouping labels).
function recordedLabels(rules, exported) {
  const recorded = new Map();
  for (const r of rules.filter((x) => x.record)) {
    const scan = scanPromQL(String(r.expr ?? ''));
    const ls = new Set(scan.grouping);
    for (const s of scan.selectors) {
      const f = exported.get(s.name) ?? exported.get(s.name.replace(/_(bucket|sum|count)$/, ''));
      f?.labels.forEach((l) => ls.add(l));
      recorded.get(s.name)?.forEach((l) => ls.add(l));
    }
    ls.delete('le');
    recorded.set(r.record, ls);
  }
  return recorded;
}

function checkRules(rules, checker, anchors) {
  section(`${P.rules}: ${rules.length} rules`);
  const names = new Set();
  for (const r of rules) {
    const name = r.alert ?? r.record;
    const where = `${P.rules} ${r.alert ? 'alert' : 'record'} ${name}`;
    if (!name || (r.alert && r.record)) { fail(P.rules, 'a rule needs exactly one of alert/record'); continue; }
    if (r.alert && names.has(name)) fail(where, 'alert name used twice');
    names.add(name);
    if (typeof r.expr !== 'string' || !r.expr.trim()) { fail(where, 'no expr'); continue; }
    checker.check(where, r.expr);
    if (!r.alert) continue;
    const sev = r.labels?.severity;
    if (!['critical', 'warning'].includes(sev)) fail(where, `severity label must be critical or warning, got ${sev}`);
    for (const a of ['summary', 'description', 'runbook_url']) {
      if (!r.annotations?.[a]) fail(where, `annotation ${a} missing`);
    }
    const url = r.annotations?.runbook_url ?? '';
    const m = url.match(/^(.*)#(.+)$/);
    if (!m || !m[1].endsWith(P.runbook)) {
      fail(where, `runbook_url must point at ${P.runbook}#<anchor>, got "${url}"`);
    } else if (!anchors.has(m[2])) {
      fail(where, `runbook_url anchor #${m[2]} is not a heading in ${P.runbook}`);
    } else if (m[2] !== githubSlug(name)) {
      fail(where, `runbook_url anchor should be #${githubSlug(name)} (the alert's own section)`);
    }
  }
}

function checkRuleTests(rules, checker) {
  const doc = parseYamlSubset(read(P.rulesTest), P.rulesTest);
  const firing = new Set();
  const quiet = new Set();
  let series = 0;
  let exprs = 0;
  (doc?.tests ?? []).forEach((t, ti) => {
    for (const s of t.input_series ?? []) {
      series++;
      checker.check(`${P.rulesTest} test ${ti + 1} input series`, s.series);
    }
    for (const e of t.promql_expr_test ?? []) {
      exprs++;
      checker.check(`${P.rulesTest} test ${ti + 1} promql_expr_test`, e.expr);
    }
    for (const a of t.alert_rule_test ?? []) {
      const exp = a.exp_alerts ?? [];
      (Array.isArray(exp) && exp.length ? firing : quiet).add(a.alertname);
    }
  });
  section(`${P.rulesTest}: ${series} input series, ${exprs} PromQL tests`);
  for (const r of rules.filter((x) => x.alert)) {
    if (!firing.has(r.alert)) fail(`${P.rulesTest}`, `no test where ${r.alert} fires`);
    if (!quiet.has(r.alert)) fail(`${P.rulesTest}`, `no test where ${r.alert} must not fire`);
  }
  const known = new Set(rules.filter((x) => x.alert).map((x) => x.alert));
  for (const a of new Set([...firing, ...quiet])) {
    if (!known.has(a)) fail(P.rulesTest, `tests an alert that rules.yml does not define: ${a}`);
  }
}

// ---------------------------------------------------------------------------
// Dashboard

// Every panel except rows, including those inside collapsed rows.
function allPanels(dash) {
  const out = [];
  for (const p of dash.panels ?? []) {
    if (p.type === 'row') (p.panels ?? []).forEach((c) => out.push(c));
    else out.push(p);
  }
  return out;
}

const DS_REF = { type: 'prometheus', uid: '${datasource}' };
const sameDs = (d) => d && d.type === DS_REF.type && d.uid === DS_REF.uid && Object.keys(d).length === 2;
const INSTANCE_QUERY = 'label_values(db_pool_max_connections, instance)';

// Panel type -> @grafana/schema module with its Options / FieldConfig types.
const PANEL_SCHEMAS = {
  'timeseries': { mod: 'timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen', custom: true },
  'stat': { mod: 'stat/panelcfg/x/StatPanelCfg_types.gen', custom: false },
  'heatmap': { mod: 'heatmap/panelcfg/x/HeatmapPanelCfg_types.gen', custom: true },
  'state-timeline': { mod: 'statetimeline/panelcfg/x/StateTimelinePanelCfg_types.gen', custom: true },
};

function checkDashboard(dash, checker, exported) {
  const where = P.dashboard;
  if (typeof dash.schemaVersion !== 'number' || dash.schemaVersion < 36) {
    fail(where, `schemaVersion ${dash.schemaVersion}: expected a number >= 36`);
  }
  if (!dash.uid || !dash.title) fail(where, 'uid and title are required');

  // Variables.
  const vars = dash.templating?.list ?? [];
  const ds = vars.find((v) => v.name === 'datasource');
  if (!ds || ds.type !== 'datasource' || ds.query !== 'prometheus') {
    fail(where, 'needs a variable "datasource" of type datasource with query "prometheus"');
  }
  const inst = vars.find((v) => v.name === 'instance');
  const instQuery = typeof inst?.query === 'object' ? inst?.query?.query : inst?.query;
  if (!inst || inst.type !== 'query' || instQuery !== INSTANCE_QUERY || !inst.multi || !inst.includeAll) {
    fail(where, `needs a variable "instance": type query, "${INSTANCE_QUERY}", multi, include All`);
  } else if (!sameDs(inst.datasource)) {
    fail(where, 'variable "instance" must use datasource ${datasource}');
  }
  for (const v of vars) {
    if (v.type !== 'query') continue;
    const q = typeof v.query === 'object' ? v.query.query : v.query;
    const m = String(q).match(/^label_values\(\s*(.+?)\s*,\s*([a-zA-Z_]\w*)\s*\)$/);
    if (!m) { fail(where, `variable ${v.name}: expected label_values(SELECTOR, LABEL), got ${q}`); continue; }
    checker.check(`${where} variable ${v.name}`, `count by (${m[2]}) (${m[1]})`);
  }

  // Panels.
  const ids = new Set();
  const boxes = [];
  let panelCount = 0;
  let targetCount = 0;
  let prev = null;
  const flat = [];
  for (const p of dash.panels ?? []) {
    flat.push(p);
    if (p.type === 'row' && p.collapsed) (p.panels ?? []).forEach((c) => flat.push(c));
  }
  for (const p of flat) {
    const pw = `${where} panel ${p.id} "${p.title}"`;
    if (typeof p.id !== 'number' || ids.has(p.id)) fail(pw, 'panel id missing or not unique');
    ids.add(p.id);
    const g = p.gridPos;
    if (!g || g.w <= 0 || g.h <= 0 || g.x < 0 || g.y < 0 || g.x + g.w > 24) {
      fail(pw, `gridPos ${JSON.stringify(g)} is outside the 24-column grid`);
    } else {
      for (const b of boxes) {
        if (g.x < b.g.x + b.g.w && b.g.x < g.x + g.w && g.y < b.g.y + b.g.h && b.g.y < g.y + g.h) {
          fail(pw, `overlaps panel ${b.id}`);
        }
      }
      boxes.push({ id: p.id, g });
      if (prev && (g.y < prev.y || (g.y === prev.y && g.x < prev.x))) {
        fail(pw, 'panels must be listed top to bottom, left to right (rows own the panels after them)');
      }
      prev = g;
    }
    if (p.type === 'row') continue;
    panelCount++;
    if (!p.title) fail(pw, 'panel has no title');
    if (!PANEL_SCHEMAS[p.type]) fail(pw, `panel type ${p.type} has no schema mapping in check_dashboard.mjs`);
    if (!sameDs(p.datasource)) fail(pw, 'panel datasource must be {type: prometheus, uid: ${datasource}}');
    const refIds = new Set();
    if (!Array.isArray(p.targets) || p.targets.length === 0) fail(pw, 'panel has no queries');
    for (const t of p.targets ?? []) {
      targetCount++;
      const tw = `${pw} query ${t.refId}`;
      if (!t.refId || refIds.has(t.refId)) fail(tw, 'refId missing or not unique');
      refIds.add(t.refId);
      if (!sameDs(t.datasource)) fail(tw, 'query datasource must be {type: prometheus, uid: ${datasource}}');
      if (typeof t.expr !== 'string' || !t.expr.trim()) { fail(tw, 'no expr'); continue; }
      const scan = checker.check(tw, t.expr);
      for (const s of scan.selectors) {
        if (!s.matchers.some((m) => m.label === 'instance' && m.op === '=~' && m.value === '$instance')) {
          fail(tw, `${s.name} is not filtered by instance=~"$instance"`);
        }
      }
    }
  }
  section(`${P.dashboard}: ${panelCount} panels, ${targetCount} queries, ${vars.length} variables`);
  for (const name of exported.keys()) {
    if (!checker.used.has(name)) fail(where, `no panel shows ${name} (every exported family should appear)`);
  }
}

// Writes the TypeScript file that tsc checks. Returns a map from generated
// line number to a human description of what that line holds.
function writeTypeCheck(dash, dashText, file) {
  const header = [
    "import type { Dashboard } from '@grafana/schema';",
  ];
  const types = Object.entries(PANEL_SCHEMAS).map(([t, s], k) => {
    header.push(`import type * as P${k} from '@grafana/schema/dist/esm/raw/composable/${s.mod}';`);
    return [t, `P${k}`];
  });
  const ns = Object.fromEntries(types);
  header.push(
    '// The JSON form of a schema type: string enums become their string values',
    '// (JSON has no enums), everything else keeps its shape.',
    'type Json<T> = T extends string ? `${T}` : T extends (infer U)[] ? Json<U>[] :',
    '  T extends object ? { [K in keyof T]: Json<T[K]> } : T;',
  );
  const where = new Map();
  const body = dashText.replace(/\s+$/, ''); // `satisfies` must follow the closing brace
  const first = header.length + 1;
  const out = [...header, `export const dashboard = ${body} satisfies Json<Dashboard>;`];
  const dashLines = body.split('\n').length;
  for (let k = 0; k < dashLines; k++) where.set(first + k, `${P.dashboard}:${k + 1}`);
  let lineNo = header.length + dashLines; // last line written so far
  const emit = (text, what) => { out.push(text); where.set(++lineNo, what); };
  let n = 0;
  for (const p of allPanels(dash)) {
    const t = ns[p.type];
    if (!t) continue;
    const what = `${P.dashboard} panel ${p.id} "${p.title}" (${p.type})`;
    emit(`export const panel${n}_options = ${JSON.stringify(p.options ?? {})} satisfies Json<${t}.Options>;`,
      `${what} options`);
    if (PANEL_SCHEMAS[p.type].custom) {
      emit(`export const panel${n}_custom = ${JSON.stringify(p.fieldConfig?.defaults?.custom ?? {})} satisfies Json<${t}.FieldConfig>;`,
        `${what} fieldConfig.defaults.custom`);
    }
    n++;
  }
  fs.writeFileSync(file, out.join('\n') + '\n');
  return { where, panels: n };
}

function runTsc(tsc, file, where) {
  const r = spawnSync(tsc, ['--noEmit', '--strict', '--moduleResolution', 'bundler', '--module', 'esnext',
    '--target', 'es2022', '--skipLibCheck', '--pretty', 'false', path.basename(file)],
  { cwd: path.dirname(file), encoding: 'utf8' });
  if (r.error) { fail('tsc', `cannot run ${tsc}: ${r.error.message}`); return; }
  const out = `${r.stdout}${r.stderr}`.trim();
  if (r.status === 0) return;
  let mapped = 0;
  for (const line of out.split('\n')) {
    const m = line.match(/^[^(]+\((\d+),(\d+)\): (.*)$/);
    if (m) {
      mapped++;
      fail(where.get(Number(m[1])) ?? `${path.basename(file)}:${m[1]}`, `col ${m[2]}: ${m[3]}`);
    }
  }
  if (!mapped) fail('tsc', out || `exit ${r.status}`);
}

// Writes the dashboard's expressions as recording rules (JSON is YAML) for
// promtool, with Grafana's variables replaced by values PromQL accepts.
function checkDashboardExprsParse(dash, promtool) {
  const rules = [];
  for (const p of allPanels(dash)) {
    for (const t of p.targets ?? []) {
      if (typeof t.expr !== 'string') continue;
      const expr = t.expr
        .replace(/\$__(rate_interval|interval|range)\b/g, '5m')
        .replace(/\$\{?instance\}?/g, '.*');
      if (/\$/.test(expr)) fail(`${P.dashboard} panel ${p.id}`, `unknown variable in ${t.expr}`);
      const rec = `dashboard_panel_${p.id}_${t.refId}`;
      rules.push({ record: rec, expr });
    }
  }
  const file = path.join(WORK, 'dashboard_exprs.rules.yml');
  fs.writeFileSync(file, JSON.stringify({ groups: [{ name: 'dashboard', rules }] }, null, 1));
  const r = spawnSync(promtool, ['check', 'rules', file], { encoding: 'utf8' });
  if (r.error) { fail('promtool', `cannot run ${promtool}: ${r.error.message}`); return; }
  if (r.status !== 0) fail(`${P.dashboard} (promtool check rules on its expressions, ${file})`,
    `${r.stdout}${r.stderr}`.trim());
  else console.log(`--- ${P.dashboard}: ${rules.length} expressions parse (promtool)`);
}

// ---------------------------------------------------------------------------
// Prometheus scrape config and Grafana provisioning: the facts the rules and
// the dashboard depend on (promtool checks the scrape config's syntax).

function checkDeployConfig() {
  const prom = parseYamlSubset(read(P.prometheus), P.prometheus);
  const job = (prom?.scrape_configs ?? []).find((j) => j.job_name === 'dbpool');
  if (!job) fail(P.prometheus, 'no scrape job "dbpool" (every rule selects job="dbpool")');
  const interval = job?.scrape_interval ?? prom?.global?.scrape_interval;
  if (interval !== '5s') fail(P.prometheus, `job dbpool should scrape every 5s, not ${interval}`);
  if (!(prom?.rule_files ?? []).includes('rules.yml')) fail(P.prometheus, 'rule_files must list rules.yml');

  const ds = parseYamlSubset(read(P.datasources), P.datasources);
  const prometheus = (ds?.datasources ?? []).find((d) => d.type === 'prometheus');
  if (String(ds?.apiVersion) !== '1') fail(P.datasources, 'apiVersion must be 1');
  if (!prometheus || !prometheus.name || !prometheus.url || !prometheus.uid) {
    fail(P.datasources, 'needs a datasource of type prometheus with name, uid and url');
  } else if (prometheus.jsonData?.timeInterval !== interval) {
    fail(P.datasources, `jsonData.timeInterval (${prometheus.jsonData?.timeInterval}) should equal the scrape interval (${interval})`);
  }

  const dp = parseYamlSubset(read(P.providers), P.providers);
  if (String(dp?.apiVersion) !== '1') fail(P.providers, 'apiVersion must be 1');
  const provider = (dp?.providers ?? []).find((x) => x.type === 'file');
  if (!provider || !provider.name || !provider.options?.path) {
    fail(P.providers, 'needs a provider of type file with a name and options.path');
  }
  section(`${P.prometheus}, ${P.datasources}, ${P.providers}: read`);
}

// ---------------------------------------------------------------------------

function main() {
  fs.mkdirSync(WORK, { recursive: true });
  const exported = loadExported();
  section(`${P.metrics}: ${exported.size} metric families`);

  let rules = [];
  try {
    rules = loadRules();
  } catch (e) {
    fail(P.rules, e.message);
  }
  const recorded = recordedLabels(rules, exported);
  const ruleChecker = makeChecker(exported, recorded);
  const anchors = loadRunbookAnchors();
  checkRules(rules, ruleChecker, anchors);
  // For the shell: compared with promtool's own count of the same file.
  fs.writeFileSync(path.join(WORK, 'rules.count'), `${rules.length}\n`);
  try {
    checkRuleTests(rules, makeChecker(exported, recorded));
  } catch (e) {
    fail(P.rulesTest, e.message);
  }

  try {
    checkDeployConfig();
  } catch (e) {
    fail('deploy config', e.message);
  }

  const runbook = read(P.runbook);
  for (const name of exported.keys()) {
    if (!runbook.includes(name)) fail(P.runbook, `does not explain metric ${name}`);
  }
  for (const r of rules.filter((x) => x.alert)) {
    if (!anchors.has(githubSlug(r.alert))) fail(P.runbook, `no section (heading) for alert ${r.alert}`);
  }

  const dashText = read(P.dashboard);
  let dash;
  try {
    dash = JSON.parse(dashText);
  } catch (e) {
    fail(P.dashboard, `not valid JSON: ${e.message}`);
  }
  if (dash) {
    checkDashboard(dash, makeChecker(exported, recorded), exported);
    const tsFile = path.join(WORK, 'dbpool.check.ts');
    const { where, panels } = writeTypeCheck(dash, dashText, tsFile);
    if (args.tsc) {
      runTsc(args.tsc, tsFile, where);
      console.log(`--- ${P.dashboard}: type-checked against @grafana/schema (dashboard + ${panels} panel option sets)`);
    } else {
      fail('tsc', 'no --tsc given: the dashboard was not type-checked');
    }
    if (args.promtool) checkDashboardExprsParse(dash, args.promtool);
    else fail('promtool', 'no --promtool given: dashboard expressions were not parsed');
  }

  if (failures.length) {
    console.error(`\nFAILED: ${failures.length} problem(s)`);
    failures.forEach((f) => console.error(`  - ${f}`));
    process.exit(1);
  }
  console.log('OK');
}

main();
