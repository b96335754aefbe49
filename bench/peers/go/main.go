// Command dbpool-peer-go serves dbpool.v1.DatabaseService/Query the way a
// team would without dbpool: grpc-go in front of a pgxpool, in one process.
// It exists to be benchmarked beside dbpool (see ../README.md).
//
//	DATABASE_URL=postgresql://... dbpool-peer-go --port 50061 --pool-size 20
//
// It prints "dbpool-peer listening grpc=HOST:PORT" once it serves, and stops
// gracefully on SIGTERM or SIGINT.
package main

import (
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/jackc/pgconn"
	"github.com/jackc/pgx/v4"
	"github.com/jackc/pgx/v4/pgxpool"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "dbpoolpeer/dbpoolv1"
	// Debian's grpc-go cannot marshal current messages without it.
	_ "protocodec"
)

type kind int

const (
	kindString kind = iota
	kindBool
	kindInt
	kindDouble
	kindDecimal
	kindBytes
	kindTimestamp
	kindJSON
)

type typeInfo struct {
	name string
	kind kind
}

// builtinTypes maps result types to Value kinds and type names exactly as
// dbpool does (server/db/value_codec.cc); other types travel as text.
var builtinTypes = map[uint32]typeInfo{
	16: {"bool", kindBool}, 17: {"bytea", kindBytes}, 18: {"char", kindString},
	19: {"name", kindString}, 20: {"int8", kindInt}, 21: {"int2", kindInt},
	23: {"int4", kindInt}, 25: {"text", kindString}, 26: {"oid", kindInt},
	114: {"json", kindJSON}, 142: {"xml", kindString}, 650: {"cidr", kindString},
	700: {"float4", kindDouble}, 701: {"float8", kindDouble},
	790: {"money", kindString}, 829: {"macaddr", kindString},
	869: {"inet", kindString}, 1042: {"bpchar", kindString},
	1043: {"varchar", kindString}, 1082: {"date", kindString},
	1083: {"time", kindString}, 1114: {"timestamp", kindTimestamp},
	1184: {"timestamptz", kindTimestamp}, 1186: {"interval", kindString},
	1266: {"timetz", kindString}, 1560: {"bit", kindString},
	1562: {"varbit", kindString}, 1700: {"numeric", kindDecimal},
	2950: {"uuid", kindString}, 3614: {"tsvector", kindString},
	3802: {"jsonb", kindJSON}, 4072: {"jsonpath", kindString},
}

// The sessions run with TimeZone=UTC, so timestamptz text ends in "+00".
const (
	timestampLayout   = "2006-01-02 15:04:05.999999999"
	timestamptzLayout = "2006-01-02 15:04:05.999999999-07"
)

type server struct {
	pb.UnimplementedDatabaseServiceServer
	pool *pgxpool.Pool
}

func (s *server) Query(ctx context.Context, req *pb.QueryRequest) (*pb.QueryResponse, error) {
	if req.ReadOnly || req.Timeout != nil || req.MaxRows != 0 {
		return nil, status.Error(codes.Unimplemented,
			"this peer implements sql and params only (no read_only, timeout or max_rows)")
	}
	// Text results, so that cells map to Values the way dbpool maps them.
	args := []interface{}{pgx.QueryResultFormats{pgx.TextFormatCode}}
	for i, p := range req.Params {
		arg, err := paramArg(p)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "params[%d]: %v", i, err)
		}
		args = append(args, arg)
	}
	rows, err := s.pool.Query(ctx, req.Sql, args...)
	if err != nil {
		return nil, toStatus(err)
	}
	defer rows.Close()
	resp := &pb.QueryResponse{}
	fields := rows.FieldDescriptions()
	for _, f := range fields {
		resp.Columns = append(resp.Columns, &pb.Column{
			Name: string(f.Name), TypeOid: f.DataTypeOID, TypeName: builtinTypes[f.DataTypeOID].name,
		})
	}
	for rows.Next() {
		row := &pb.Row{Values: make([]*pb.Value, len(fields))}
		for j, cell := range rows.RawValues() {
			if row.Values[j], err = decodeCell(fields[j].DataTypeOID, cell); err != nil {
				return nil, status.Error(codes.Internal, err.Error())
			}
		}
		resp.Rows = append(resp.Rows, row)
	}
	if err := rows.Err(); err != nil {
		return nil, toStatus(err)
	}
	tag := rows.CommandTag()
	resp.CommandTag = tag.String()
	resp.RowsAffected = tag.RowsAffected()
	return resp, nil
}

// paramArg turns a parameter into a value pgx binds to the type PostgreSQL
// infers for its placeholder; type_hint is not consulted.
func paramArg(v *pb.Value) (interface{}, error) {
	switch k := v.Kind.(type) {
	case nil, *pb.Value_NullValue:
		return nil, nil
	case *pb.Value_BoolValue:
		return k.BoolValue, nil
	case *pb.Value_Int64Value:
		return k.Int64Value, nil
	case *pb.Value_DoubleValue:
		return k.DoubleValue, nil
	case *pb.Value_StringValue:
		return k.StringValue, nil
	case *pb.Value_BytesValue:
		return k.BytesValue, nil
	case *pb.Value_TimestampValue:
		if err := k.TimestampValue.CheckValid(); err != nil {
			return nil, err
		}
		return k.TimestampValue.AsTime(), nil
	case *pb.Value_DecimalValue:
		return k.DecimalValue, nil
	case *pb.Value_JsonValue:
		return k.JsonValue, nil
	}
	return nil, fmt.Errorf("unsupported value kind %T", v.Kind)
}

func decodeCell(oid uint32, text []byte) (*pb.Value, error) {
	if text == nil {
		return &pb.Value{Kind: &pb.Value_NullValue{NullValue: structpb.NullValue_NULL_VALUE}}, nil
	}
	s := string(text)
	switch builtinTypes[oid].kind {
	case kindBool:
		return &pb.Value{Kind: &pb.Value_BoolValue{BoolValue: s == "t"}}, nil
	case kindInt:
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("bad integer from server: %q", s)
		}
		return &pb.Value{Kind: &pb.Value_Int64Value{Int64Value: n}}, nil
	case kindDouble:
		d, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, fmt.Errorf("bad float from server: %q", s)
		}
		return &pb.Value{Kind: &pb.Value_DoubleValue{DoubleValue: d}}, nil
	case kindDecimal:
		return &pb.Value{Kind: &pb.Value_DecimalValue{DecimalValue: s}}, nil
	case kindBytes:
		// bytea_output = hex: "\x" then two digits a byte.
		if len(s) < 2 || s[:2] != `\x` {
			return nil, errors.New("bytea value is not in hex format")
		}
		b, err := hex.DecodeString(s[2:])
		if err != nil {
			return nil, fmt.Errorf("bad bytea from server: %v", err)
		}
		return &pb.Value{Kind: &pb.Value_BytesValue{BytesValue: b}}, nil
	case kindTimestamp:
		layout := timestampLayout
		if oid == 1184 {
			layout = timestamptzLayout
		}
		// Infinity, BC dates and years past 9999 do not parse: they travel
		// as text, as in dbpool.
		if t, err := time.Parse(layout, s); err == nil {
			return &pb.Value{Kind: &pb.Value_TimestampValue{TimestampValue: timestamppb.New(t)}}, nil
		}
		return &pb.Value{Kind: &pb.Value_StringValue{StringValue: s}}, nil
	case kindJSON:
		return &pb.Value{Kind: &pb.Value_JsonValue{JsonValue: s}}, nil
	}
	return &pb.Value{Kind: &pb.Value_StringValue{StringValue: s}}, nil
}

// toStatus maps errors to gRPC codes by SQLSTATE, following the main rows
// of dbpool's table; the message is PostgreSQL's.
func toStatus(err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	if errors.Is(err, context.Canceled) {
		return status.Error(codes.Canceled, err.Error())
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		// Not from PostgreSQL: the pool could not reach the database.
		return status.Error(codes.Unavailable, err.Error())
	}
	return status.Errorf(codeForSQLState(pgErr.Code), "%s (SQLSTATE %s)", pgErr.Message, pgErr.Code)
}

func codeForSQLState(state string) codes.Code {
	switch state {
	case "23505":
		return codes.AlreadyExists
	case "40001", "40P01":
		return codes.Aborted
	case "42501", "25006":
		return codes.PermissionDenied
	case "57014":
		return codes.DeadlineExceeded
	case "57P01", "57P02", "57P03":
		return codes.Unavailable
	}
	switch state[:2] {
	case "22", "42", "0A":
		return codes.InvalidArgument
	case "23", "55":
		return codes.FailedPrecondition
	case "53":
		return codes.ResourceExhausted
	case "08":
		return codes.Unavailable
	}
	return codes.Internal
}

// envInt reads an integer default for a flag from the environment.
func envInt(name string, fallback int) int {
	v, ok := os.LookupEnv(name)
	if !ok {
		return fallback
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		fmt.Fprintf(os.Stderr, "dbpool-peer-go: %s=%q is not an integer\n", name, v)
		os.Exit(2)
	}
	return n
}

func main() {
	host := flag.String("host", "127.0.0.1", "address to listen on")
	port := flag.Int("port", envInt("PEER_PORT", 50061), "gRPC port; 0 picks a free one (env PEER_PORT)")
	poolSize := flag.Int("pool-size", envInt("PEER_POOL_SIZE", 20), "most database connections (env PEER_POOL_SIZE)")
	flag.Parse()
	// Exit codes as the flag package's: 2 for a bad configuration.
	url := os.Getenv("DATABASE_URL")
	if url == "" || *poolSize < 1 {
		fmt.Fprintln(os.Stderr, "dbpool-peer-go: DATABASE_URL must be set and --pool-size at least 1")
		os.Exit(2)
	}
	if err := run(url, *host, *port, *poolSize); err != nil {
		fmt.Fprintln(os.Stderr, "dbpool-peer-go:", err)
		os.Exit(1)
	}
}

func run(url, host string, port, poolSize int) error {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return fmt.Errorf("DATABASE_URL: %v", err)
	}
	cfg.MaxConns = int32(poolSize)
	cfg.ConnConfig.RuntimeParams["timezone"] = "UTC"
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	pool, err := pgxpool.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()

	lis, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		return err
	}
	srv := grpc.NewServer()
	pb.RegisterDatabaseServiceServer(srv, &server{pool: pool})
	go func() {
		<-ctx.Done()
		srv.GracefulStop()
	}()
	fmt.Printf("dbpool-peer listening grpc=%s\n", lis.Addr())
	return srv.Serve(lis)
}
