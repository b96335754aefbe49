#!/usr/bin/env node
// Runs a parameterised query through dbpool, reads the pool's stats, then
// watches them stream.
//
//   node client/examples/node/dbpool-example.js [--target HOST:PORT] [--watch N]
//
// The target defaults to $DBPOOL_TARGET, else 127.0.0.1:50051. $DBPOOL_TOKEN,
// when set, goes with every call as a bearer token.
'use strict';

const path = require('node:path');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

// The contract, and the google.api protos it imports (Debian's
// golang-github-gogo-googleapis-dev). Point these elsewhere when copying.
const PROTO_DIR = path.resolve(__dirname, '../../../proto');
const GOOGLEAPIS_DIR = '/usr/share/gocode/src/github.com/gogo/googleapis';

// A deadline bounds both the wait for a pooled connection and the statement;
// without one a call to a stuck server waits for ever.
const TIMEOUT_MS = 5000;
const WATCH_INTERVAL_S = 1;

const USAGE = 'usage: dbpool-example.js [--target HOST:PORT] [--watch N]';

function loadDatabaseService() {
  // The stubs are built from the .proto files at start: no generated code.
  const definition = protoLoader.loadSync('dbpool/v1/database_service.proto', {
    keepCase: true,
    // int64 as decimal strings, so that no digit is lost in a double.
    longs: String,
    enums: String,
    // Zero fields as 0, false and "" rather than absent.
    defaults: true,
    // Sets value.kind to the name of the oneof member that is present.
    oneofs: true,
    includeDirs: [PROTO_DIR, GOOGLEAPIS_DIR],
  });
  return grpc.loadPackageDefinition(definition).dbpool.v1.DatabaseService;
}

function isoTime({ seconds, nanos }) {
  return new Date(Number(seconds) * 1000 + Math.floor(nanos / 1e6)).toISOString();
}

// A result value as text, whichever member of the oneof carries it.
function cell(value) {
  switch (value.kind) {
    case undefined:
    case 'null_value':
      return 'NULL';
    case 'timestamp_value':
      return isoTime(value.timestamp_value);
    case 'bytes_value':
      return `\\x${value.bytes_value.toString('hex')}`;
    default:
      return String(value[value.kind]);
  }
}

function deadline(ms) {
  return { deadline: Date.now() + ms };
}

function unary(db, method, request, metadata) {
  return new Promise((resolve, reject) => {
    db[method](request, metadata, deadline(TIMEOUT_MS), (err, reply) => {
      if (err) reject(err);
      else resolve(reply);
    });
  });
}

async function showQuery(db, metadata) {
  // $1 is bound by the server, never spliced into the SQL text.
  const reply = await unary(db, 'Query', {
    sql: 'SELECT $1::int + 1 AS answer',
    params: [{ int64_value: '41' }],
  }, metadata);
  const names = reply.columns.map((column) => column.name);
  for (const row of reply.rows) {
    console.log(`row: ${row.values.map((value, i) => `${names[i]}=${cell(value)}`).join(' ')}`);
  }
  console.log(`tag: ${reply.command_tag}`);
}

async function showPoolStats(db, metadata) {
  const s = await unary(db, 'GetPoolStats', {}, metadata);
  console.log(`pool: active=${s.active_connections} idle=${s.idle_connections}`
    + ` connecting=${s.connecting_connections} total=${s.total_connections}`
    + ` max=${s.max_connections} waiting=${s.waiting_connections}`
    + ` reachable=${s.database_reachable}`);
}

function watchPoolStats(db, metadata, count) {
  return new Promise((resolve, reject) => {
    // The first snapshot comes at once, then one per interval.
    const stream = db.StreamPoolStats({ interval: { seconds: WATCH_INTERVAL_S } }, metadata,
      deadline(TIMEOUT_MS + count * WATCH_INTERVAL_S * 1000));
    let seen = 0;
    stream.on('data', (s) => {
      // Messages already received may still arrive after the cancel.
      if (seen === count) return;
      seen += 1;
      console.log(`watch ${seen}/${count}: active=${s.active_connections}`
        + ` idle=${s.idle_connections} total=${s.total_connections}`
        + ` waiting=${s.waiting_connections} time=${isoTime(s.time)}`);
      if (seen === count) {
        // The server would go on sending for ever. The CANCELLED error
        // this raises comes after resolve, so it is ignored.
        stream.cancel();
        resolve();
      }
    });
    stream.on('error', reject);
    stream.on('end', () => {
      reject(new Error(`the stream ended after ${seen} of ${count} snapshots`));
    });
  });
}

function parseCommandLine() {
  const { values } = parseArgs({
    options: {
      target: { type: 'string', default: process.env.DBPOOL_TARGET || '127.0.0.1:50051' },
      watch: { type: 'string', default: '3' },
    },
  });
  const watch = Number(values.watch);
  if (!Number.isInteger(watch) || watch < 1) {
    throw new Error(`--watch must be an integer of at least 1, got ${values.watch}`);
  }
  return { target: values.target, watch };
}

async function main() {
  let options;
  try {
    options = parseCommandLine();
  } catch (err) {
    console.error(`dbpool-example: ${err.message}\n${USAGE}`);
    process.exitCode = 2;
    return;
  }
  const metadata = new grpc.Metadata();
  if (process.env.DBPOOL_TOKEN) {
    metadata.set('authorization', `Bearer ${process.env.DBPOOL_TOKEN}`);
  }
  let db;
  try {
    const DatabaseService = loadDatabaseService();
    db = new DatabaseService(options.target, grpc.credentials.createInsecure());
    await showQuery(db, metadata);
    await showPoolStats(db, metadata);
    await watchPoolStats(db, metadata, options.watch);
  } catch (err) {
    // gRPC errors carry a numeric status code; others (a missing .proto) do not.
    console.error(typeof err.code === 'number'
      ? `dbpool-example: ${options.target}: ${grpc.status[err.code]}: ${err.details}`
      : `dbpool-example: ${err.message}`);
    process.exitCode = 1;
  } finally {
    db?.close();
  }
}

main();
