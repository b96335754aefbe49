// Command dbpool-example runs a parameterised query through dbpool, reads
// the pool's stats, then watches them stream.
//
//	client/examples/go/build.sh build/client-examples/dbpool-example-go
//	build/client-examples/dbpool-example-go [--target HOST:PORT] [--watch N]
//
// The target defaults to $DBPOOL_TARGET, else 127.0.0.1:50051. $DBPOOL_TOKEN,
// when set, goes with every call as a bearer token.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "dbpoolexample/dbpoolv1"
	// Debian's grpc-go cannot marshal current messages without it.
	_ "protocodec"
)

const (
	// A deadline bounds both the wait for a pooled connection and the
	// statement; without one a call to a stuck server waits for ever.
	timeout       = 5 * time.Second
	watchInterval = time.Second
)

func main() {
	target := flag.String("target", envOr("DBPOOL_TARGET", "127.0.0.1:50051"),
		"server host:port ($DBPOOL_TARGET, else 127.0.0.1:50051)")
	watch := flag.Int("watch", 3, "pool snapshots to watch")
	flag.Parse()
	if *watch < 1 {
		fmt.Fprintln(os.Stderr, "dbpool-example: --watch must be at least 1")
		os.Exit(2)
	}
	if err := run(*target, *watch); err != nil {
		if s, ok := status.FromError(err); ok {
			err = fmt.Errorf("%s: %s", s.Code(), s.Message())
		}
		fmt.Fprintf(os.Stderr, "dbpool-example: %s: %v\n", *target, err)
		os.Exit(1)
	}
}

func envOr(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

func run(target string, watch int) error {
	// Dial connects in the background; a server that is down shows as
	// UNAVAILABLE on the first call.
	conn, err := grpc.Dial(target, grpc.WithInsecure())
	if err != nil {
		return err
	}
	defer conn.Close()
	db := pb.NewDatabaseServiceClient(conn)

	ctx := context.Background()
	if token := os.Getenv("DBPOOL_TOKEN"); token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	if err := showQuery(ctx, db); err != nil {
		return err
	}
	if err := showPoolStats(ctx, db); err != nil {
		return err
	}
	return watchPoolStats(ctx, db, watch)
}

func showQuery(ctx context.Context, db pb.DatabaseServiceClient) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// $1 is bound by the server, never spliced into the SQL text.
	reply, err := db.Query(ctx, &pb.QueryRequest{
		Sql:    "SELECT $1::int + 1 AS answer",
		Params: []*pb.Value{{Kind: &pb.Value_Int64Value{Int64Value: 41}}},
	})
	if err != nil {
		return err
	}
	for _, row := range reply.Rows {
		cells := make([]string, len(row.Values))
		for i, v := range row.Values {
			cells[i] = reply.Columns[i].Name + "=" + cell(v)
		}
		fmt.Println("row:", strings.Join(cells, " "))
	}
	fmt.Println("tag:", reply.CommandTag)
	return nil
}

// cell renders a result value as text, whichever member of the oneof
// carries it.
func cell(v *pb.Value) string {
	switch k := v.Kind.(type) {
	case nil, *pb.Value_NullValue:
		return "NULL"
	case *pb.Value_BoolValue:
		return strconv.FormatBool(k.BoolValue)
	case *pb.Value_Int64Value:
		return strconv.FormatInt(k.Int64Value, 10)
	case *pb.Value_DoubleValue:
		return strconv.FormatFloat(k.DoubleValue, 'g', -1, 64)
	case *pb.Value_StringValue:
		return k.StringValue
	case *pb.Value_BytesValue:
		return fmt.Sprintf("\\x%x", k.BytesValue)
	case *pb.Value_TimestampValue:
		return k.TimestampValue.AsTime().Format(time.RFC3339Nano)
	case *pb.Value_DecimalValue:
		return k.DecimalValue
	case *pb.Value_JsonValue:
		return k.JsonValue
	default:
		return fmt.Sprint(k)
	}
}

func showPoolStats(ctx context.Context, db pb.DatabaseServiceClient) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	s, err := db.GetPoolStats(ctx, &pb.GetPoolStatsRequest{})
	if err != nil {
		return err
	}
	fmt.Printf("pool: active=%d idle=%d connecting=%d total=%d max=%d waiting=%d reachable=%t\n",
		s.ActiveConnections, s.IdleConnections, s.ConnectingConnections, s.TotalConnections,
		s.MaxConnections, s.WaitingConnections, s.DatabaseReachable)
	return nil
}

func watchPoolStats(ctx context.Context, db pb.DatabaseServiceClient, count int) error {
	// The first snapshot comes at once, then one per interval.
	ctx, cancel := context.WithTimeout(ctx, timeout+time.Duration(count)*watchInterval)
	// The server would go on sending for ever: cancelling ends the stream.
	defer cancel()
	stream, err := db.StreamPoolStats(ctx, &pb.StreamPoolStatsRequest{
		Interval: durationpb.New(watchInterval),
	})
	if err != nil {
		return err
	}
	for seen := 1; seen <= count; seen++ {
		s, err := stream.Recv()
		if err == io.EOF {
			return fmt.Errorf("the stream ended after %d of %d snapshots", seen-1, count)
		}
		if err != nil {
			return err
		}
		fmt.Printf("watch %d/%d: active=%d idle=%d total=%d waiting=%d time=%s\n",
			seen, count, s.ActiveConnections, s.IdleConnections, s.TotalConnections,
			s.WaitingConnections, s.Time.AsTime().Format(time.RFC3339Nano))
	}
	return nil
}
