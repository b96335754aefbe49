#!/usr/bin/env python3
"""Runs a parameterised query through dbpool, reads the pool's stats, then
watches them stream.

    client/examples/python/generate.sh build/client-examples/python
    PYTHONPATH=build/client-examples/python \\
        python3 client/examples/python/dbpool_example.py [--target HOST:PORT] [--watch N]

The target defaults to $DBPOOL_TARGET, else 127.0.0.1:50051. $DBPOOL_TOKEN,
when set, goes with every call as a bearer token.
"""

import argparse
import os
import sys

import grpc
from google.protobuf.duration_pb2 import Duration

from dbpool.v1 import database_service_pb2 as pb
from dbpool.v1 import database_service_pb2_grpc as pb_grpc

# A deadline bounds both the wait for a pooled connection and the statement;
# without one a call to a stuck server waits for ever.
TIMEOUT_S = 5
WATCH_INTERVAL_S = 1


def cell(value):
    """A result value as text, whichever member of the oneof carries it."""
    kind = value.WhichOneof("kind")
    if kind in (None, "null_value"):
        return "NULL"
    member = getattr(value, kind)
    if kind == "timestamp_value":
        return member.ToJsonString()
    if kind == "bytes_value":
        return "\\x" + member.hex()
    if kind == "bool_value":
        return "true" if member else "false"
    return str(member)


def show_query(db, metadata):
    # $1 is bound by the server, never spliced into the SQL text.
    request = pb.QueryRequest(sql="SELECT $1::int + 1 AS answer",
                              params=[pb.Value(int64_value=41)])
    reply = db.Query(request, metadata=metadata, timeout=TIMEOUT_S)
    names = [column.name for column in reply.columns]
    for row in reply.rows:
        print("row:", " ".join(f"{name}={cell(value)}"
                               for name, value in zip(names, row.values)))
    print("tag:", reply.command_tag)


def show_pool_stats(db, metadata):
    s = db.GetPoolStats(pb.GetPoolStatsRequest(), metadata=metadata, timeout=TIMEOUT_S)
    print(f"pool: active={s.active_connections} idle={s.idle_connections}"
          f" connecting={s.connecting_connections} total={s.total_connections}"
          f" max={s.max_connections} waiting={s.waiting_connections}"
          f" reachable={str(s.database_reachable).lower()}")


def watch_pool_stats(db, metadata, count):
    request = pb.StreamPoolStatsRequest(interval=Duration(seconds=WATCH_INTERVAL_S))
    # The first snapshot comes at once, then one per interval.
    stream = db.StreamPoolStats(request, metadata=metadata,
                                timeout=TIMEOUT_S + count * WATCH_INTERVAL_S)
    seen = 0
    for s in stream:
        seen += 1
        print(f"watch {seen}/{count}: active={s.active_connections}"
              f" idle={s.idle_connections} total={s.total_connections}"
              f" waiting={s.waiting_connections} time={s.time.ToJsonString()}",
              flush=True)
        if seen == count:
            # The server would go on sending for ever.
            stream.cancel()
            return
    raise SystemExit(f"dbpool-example: the stream ended after {seen} of {count} snapshots")


def main():
    parser = argparse.ArgumentParser(
        description="A query, the pool's stats and a watch of them, through dbpool.")
    parser.add_argument("--target", default=os.environ.get("DBPOOL_TARGET", "127.0.0.1:50051"),
                        help="server host:port (default $DBPOOL_TARGET, else 127.0.0.1:50051)")
    parser.add_argument("--watch", type=int, default=3, metavar="N",
                        help="pool snapshots to watch (default %(default)s)")
    args = parser.parse_args()
    if args.watch < 1:
        parser.error("--watch must be at least 1")
    token = os.environ.get("DBPOOL_TOKEN")
    metadata = [("authorization", "Bearer " + token)] if token else None

    with grpc.insecure_channel(args.target) as channel:
        db = pb_grpc.DatabaseServiceStub(channel)
        try:
            show_query(db, metadata)
            show_pool_stats(db, metadata)
            watch_pool_stats(db, metadata, args.watch)
        except grpc.RpcError as e:
            sys.exit(f"dbpool-example: {args.target}: {e.code().name}: {e.details()}")


if __name__ == "__main__":
    main()
