#!/usr/bin/env node
// dbpool.v1.DatabaseService/Query on the stack dbpool grew out of:
// @grpc/grpc-js and @grpc/proto-loader in front of a pg.Pool. It exists to be
// benchmarked beside dbpool (see ../README.md).
//
//   DATABASE_URL=postgresql://... node bench/peers/node/server.js --port 50062 --pool-size 20
//
// It prints "dbpool-peer listening grpc=HOST:PORT" once it serves, and stops
// gracefully on SIGTERM or SIGINT.
'use strict';

const path = require('node:path');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const pg = require('pg');

const repo = path.resolve(__dirname, '../../..');

// Result types as dbpool maps them (server/db/value_codec.cc): OID to type
// name and the Value member that carries it; other types travel as text.
const BUILTIN_TYPES = new Map([
  [16, ['bool', 'bool']], [17, ['bytea', 'bytes']], [18, ['char', 'string']],
  [19, ['name', 'string']], [20, ['int8', 'int']], [21, ['int2', 'int']],
  [23, ['int4', 'int']], [25, ['text', 'string']], [26, ['oid', 'int']],
  [114, ['json', 'json']], [142, ['xml', 'string']], [650, ['cidr', 'string']],
  [700, ['float4', 'double']], [701, ['float8', 'double']],
  [790, ['money', 'string']], [829, ['macaddr', 'string']],
  [869, ['inet', 'string']], [1042, ['bpchar', 'string']],
  [1043, ['varchar', 'string']], [1082, ['date', 'string']],
  [1083, ['time', 'string']], [1114, ['timestamp', 'timestamp']],
  [1184, ['timestamptz', 'timestamp']], [1186, ['interval', 'string']],
  [1266, ['timetz', 'string']], [1560, ['bit', 'string']],
  [1562, ['varbit', 'string']], [1700, ['numeric', 'decimal']],
  [2950, ['uuid', 'string']], [3614, ['tsvector', 'string']],
  [3802, ['jsonb', 'json']], [4072, ['jsonpath', 'string']],
]);

// The sessions run with TimeZone=UTC, so timestamptz text ends in "+00".
// Infinity, BC dates and years past 9999 do not match and travel as text.
const TIMESTAMP_RE = /^(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?(?:\+00)?$/;

// pg's own parsers would turn timestamps into millisecond Dates and JSON
// into objects; keep PostgreSQL's text and map it like dbpool.
const RAW_TEXT = { getTypeParser: () => (text) => text };

function timestampValue(text) {
  const m = TIMESTAMP_RE.exec(text);
  if (!m) return { string_value: text };
  // Not Date.UTC, which reads years 0-99 as 1900-1999.
  const date = new Date(0);
  date.setUTCFullYear(+m[1], +m[2] - 1, +m[3]);
  date.setUTCHours(+m[4], +m[5], +m[6]);
  return {
    timestamp_value: {
      seconds: String(date.getTime() / 1000),
      nanos: Number((m[7] || '').padEnd(9, '0')),
    },
  };
}

function decodeCell(oid, text) {
  if (text === null) return { null_value: 'NULL_VALUE' };
  switch ((BUILTIN_TYPES.get(oid) || [])[1]) {
    case 'bool': return { bool_value: text === 't' };
    // int64 travels as a decimal string (longs: String) so no digit is lost.
    case 'int': return { int64_value: text };
    case 'double': return { double_value: Number(text) };
    case 'decimal': return { decimal_value: text };
    // bytea_output = hex: "\x" then two digits a byte.
    case 'bytes': return { bytes_value: Buffer.from(text.slice(2), 'hex') };
    case 'timestamp': return timestampValue(text);
    case 'json': return { json_value: text };
    default: return { string_value: text };
  }
}

// pg sends parameters untyped, for PostgreSQL to type from the statement;
// type_hint is not consulted.
function paramValue(value) {
  switch (value.kind) {
    case 'bool_value': return value.bool_value;
    case 'int64_value': return value.int64_value;
    case 'double_value': return value.double_value;
    case 'string_value': return value.string_value;
    case 'bytes_value': return value.bytes_value;
    case 'decimal_value': return value.decimal_value;
    case 'json_value': return value.json_value;
    case 'timestamp_value': {
      const { seconds, nanos } = value.timestamp_value;
      const iso = new Date(Number(seconds) * 1000).toISOString().slice(0, 19);
      return `${iso}.${String(nanos || 0).padStart(9, '0')}Z`;
    }
    default: return null;
  }
}

// pg keeps only the first word of the command tag, the OID of an INSERT and
// the row count; put the tag back together from those.
function commandTag(result) {
  if (result.rowCount === null) return result.command;
  if (result.command === 'INSERT') return `INSERT ${result.oid} ${result.rowCount}`;
  return `${result.command} ${result.rowCount}`;
}

// The main rows of dbpool's SQLSTATE table; the message is PostgreSQL's.
function codeForSqlState(state) {
  const exact = {
    '23505': grpc.status.ALREADY_EXISTS,
    '40001': grpc.status.ABORTED,
    '40P01': grpc.status.ABORTED,
    '42501': grpc.status.PERMISSION_DENIED,
    '25006': grpc.status.PERMISSION_DENIED,
    '57014': grpc.status.DEADLINE_EXCEEDED,
    '57P01': grpc.status.UNAVAILABLE,
    '57P02': grpc.status.UNAVAILABLE,
    '57P03': grpc.status.UNAVAILABLE,
  }[state];
  if (exact !== undefined) return exact;
  switch (state.slice(0, 2)) {
    case '22': case '42': case '0A': return grpc.status.INVALID_ARGUMENT;
    case '23': case '55': return grpc.status.FAILED_PRECONDITION;
    case '53': return grpc.status.RESOURCE_EXHAUSTED;
    case '08': return grpc.status.UNAVAILABLE;
    default: return grpc.status.INTERNAL;
  }
}

function toStatus(err) {
  // Errors that PostgreSQL did not send come from failing to reach it.
  if (!(err instanceof pg.DatabaseError)) {
    return { code: grpc.status.UNAVAILABLE, details: err.message };
  }
  return { code: codeForSqlState(err.code), details: `${err.message} (SQLSTATE ${err.code})` };
}

function queryHandler(pool) {
  return async (call, callback) => {
    const req = call.request;
    if (req.read_only || req.timeout || Number(req.max_rows || 0) !== 0) {
      callback({
        code: grpc.status.UNIMPLEMENTED,
        details: 'this peer implements sql and params only (no read_only, timeout or max_rows)',
      });
      return;
    }
    let values;
    try {
      values = (req.params || []).map(paramValue);
    } catch (err) {
      // A timestamp outside what a Date can hold.
      callback({ code: grpc.status.INVALID_ARGUMENT, details: `params: ${err.message}` });
      return;
    }
    let result;
    try {
      result = await pool.query({
        text: req.sql,
        values,
        rowMode: 'array',
        types: RAW_TEXT,
      });
    } catch (err) {
      callback(toStatus(err));
      return;
    }
    // Without parameters pg uses the simple protocol, which runs several
    // statements and returns one result each.
    if (Array.isArray(result)) {
      callback({ code: grpc.status.INVALID_ARGUMENT, details: 'Query runs one statement' });
      return;
    }
    const oids = result.fields.map((f) => f.dataTypeID);
    callback(null, {
      columns: result.fields.map((f) => ({
        name: f.name,
        type_oid: f.dataTypeID,
        type_name: (BUILTIN_TYPES.get(f.dataTypeID) || [''])[0],
      })),
      rows: result.rows.map((cells) => ({ values: cells.map((c, j) => decodeCell(oids[j], c)) })),
      rows_affected: String(result.rowCount || 0),
      command_tag: commandTag(result),
    });
  };
}

function main() {
  const { values: opts } = parseArgs({
    options: {
      host: { type: 'string', default: '127.0.0.1' },
      port: { type: 'string', default: process.env.PEER_PORT || '50062' },
      'pool-size': { type: 'string', default: process.env.PEER_POOL_SIZE || '20' },
    },
  });
  const port = Number(opts.port);
  const poolSize = Number(opts['pool-size']);
  if (!process.env.DATABASE_URL) throw new Error('DATABASE_URL is not set');
  if (!Number.isInteger(port) || port < 0) {
    throw new Error(`--port must be an integer port number, got ${opts.port}`);
  }
  if (!Number.isInteger(poolSize) || poolSize < 1) {
    throw new Error(`--pool-size must be a positive integer, got ${opts['pool-size']}`);
  }

  const definition = protoLoader.loadSync('dbpool/v1/database_service.proto', {
    keepCase: true,
    longs: String,
    enums: String,
    oneofs: true,
    includeDirs: [path.join(repo, 'proto'), '/usr/share/gocode/src/github.com/gogo/googleapis'],
  });
  const { DatabaseService } = grpc.loadPackageDefinition(definition).dbpool.v1;

  const pool = new pg.Pool({
    connectionString: process.env.DATABASE_URL,
    max: poolSize,
    idleTimeoutMillis: 30000,
    options: '-c TimeZone=UTC',
  });
  // An idle connection that breaks is dropped by the pool; do not crash.
  pool.on('error', (err) => console.error('dbpool-peer-node: idle connection:', err.message));

  const server = new grpc.Server();
  server.addService(DatabaseService.service, { Query: queryHandler(pool) });
  server.bindAsync(`${opts.host}:${port}`, grpc.ServerCredentials.createInsecure(), (err, bound) => {
    if (err) {
      console.error('dbpool-peer-node:', err.message);
      process.exit(1);
    }
    console.log(`dbpool-peer listening grpc=${opts.host}:${bound}`);
  });
  const stop = () => server.tryShutdown(() => pool.end());
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

try {
  main();
} catch (err) {
  console.error('dbpool-peer-node:', err.message);
  process.exit(2);
}
