"""End-to-end tests of the dbpool command-line client.

Runs the built `dbpool` binary against dbpool-server and a throwaway
PostgreSQL cluster, both started through harness.py:

    /usr/bin/python3 -m unittest -v tests/e2e/test_cli.py

The client binary is $DBPOOL_CLI_BIN (default <repo>/build/dbpool), the
server binary $DBPOOL_SERVER_BIN (default <repo>/build/dbpool-server).
"""

import json
import os
import re
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

# Generous, so that a slow machine does not fail the test, but finite, so
# that a hung client does.
CLI_TIMEOUT_S = 30.0
WATCH_LINE_RE = re.compile(
    r"^\d{4}-\d\d-\d\dT\S+Z active=\d+ idle=\d+ waiting=\d+ total=\d+ max=\d+$")



class CliTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        harness.start_stack_with_cli(cls)

    @classmethod
    def tearDownClass(cls):
        harness.stop_server_checked(cls)

    # -- helpers ------------------------------------------------------------

    def run_cli(self, *args, target=True, env=None):
        return harness.run_cli(self, args, CLI_TIMEOUT_S, target=target, env=env)

    def assert_exit(self, proc, code):
        self.assertEqual(proc.returncode, code,
                         "want exit %d, got %d\nstdout:\n%s\nstderr:\n%s"
                         % (code, proc.returncode, proc.stdout, proc.stderr))

    def run_json(self, *args):
        proc = self.run_cli("--json", *args)
        self.assert_exit(proc, 0)
        lines = proc.stdout.splitlines()
        self.assertEqual(len(lines), 1, "want one line of JSON: %r" % proc.stdout)
        return json.loads(lines[0])

    # -- query --------------------------------------------------------------

    def test_query_human_output(self):
        proc = self.run_cli("query", "SELECT 1 AS a, $1::int + 1 AS b, $2 AS c",
                            "--param", "int:41", "--param", "str:x:y")
        self.assert_exit(proc, 0)
        lines = proc.stdout.splitlines()
        self.assertEqual(len(lines), 4, proc.stdout)
        self.assertEqual(lines[0].split(), ["a", "|", "b", "|", "c"])
        self.assertEqual(lines[2].split(), ["1", "|", "42", "|", "x:y"])
        self.assertRegex(lines[3], r"^\(1 row, SELECT 1, acquire [0-9.]+ ms, "
                                   r"exec [0-9.]+ ms\)$")
        self.assertEqual(proc.stderr, "")

    def test_query_renders_values_readably(self):
        proc = self.run_cli(
            "query",
            "SELECT NULL::int AS n, '\\xdeadbeef'::bytea AS y, "
            "'2024-01-02 03:04:05+00'::timestamptz AS t, 12.50::numeric AS d, "
            "true AS b, 1.5::float8 AS f, 'NaN'::float8 AS nan")
        self.assert_exit(proc, 0)
        cells = [c.strip() for c in proc.stdout.splitlines()[2].split("|")]
        self.assertEqual(cells, ["NULL", "\\xdeadbeef", "2024-01-02T03:04:05Z",
                                 "12.50", "true", "1.5", "NaN"])

    def test_query_rows_and_footer(self):
        proc = self.run_cli("query", "SELECT g FROM generate_series(1, 3) AS g")
        self.assert_exit(proc, 0)
        lines = proc.stdout.splitlines()
        self.assertEqual([l.strip() for l in lines[2:5]], ["1", "2", "3"])
        self.assertTrue(lines[5].startswith("(3 rows, SELECT 3, acquire "), lines)

    def test_query_json(self):
        resp = self.run_json("query", "SELECT g AS n, 'v' || g AS s "
                             "FROM generate_series(1, 3) AS g")
        self.assertEqual([c["name"] for c in resp["columns"]], ["n", "s"])
        self.assertEqual(len(resp["rows"]), 3)
        self.assertEqual(resp["rows"][2]["values"][0]["int64_value"], "3")
        self.assertEqual(resp["rows"][2]["values"][1]["string_value"], "v3")
        self.assertEqual(resp["command_tag"], "SELECT 3")
        self.assertIn("execution", resp["timings"])

    def test_global_flags_after_command(self):
        proc = self.run_cli("query", "SELECT 7 AS seven", "--json", "--timeout=10s",
                            "--target", self.server.address, target=False)
        self.assert_exit(proc, 0)
        self.assertEqual(json.loads(proc.stdout)["rows"][0]["values"][0]["int64_value"],
                         "7")

    def test_typed_params(self):
        resp = self.run_json(
            "query",
            "SELECT $1::bool, $2::float8, $3::bytea, $4::jsonb, $5::numeric, "
            "$6::timestamptz, $7::int IS NULL, $8::text, pg_typeof($9)::text",
            "--param", "bool:true", "--param", "float:1.5", "--param", "bytes:00ff",
            "--param", 'json:{"a": [1, 2]}', "--param", "decimal:12.50",
            "--param", "ts:2024-01-02T03:04:05Z", "--param", "null",
            "--param", "str:null",
            "--param", "6f1d0c3e-1b5a-4d2f-9a77-0a4b1c2d3e4f", "--param-type", "uuid")
        values = resp["rows"][0]["values"]
        self.assertIs(values[0]["bool_value"], True)
        self.assertEqual(values[1]["double_value"], 1.5)
        self.assertEqual(values[2]["bytes_value"], "AP8=")  # base64 of 00ff
        self.assertEqual(json.loads(values[3]["json_value"]), {"a": [1, 2]})
        self.assertEqual(values[4]["decimal_value"], "12.50")
        self.assertEqual(values[5]["timestamp_value"], "2024-01-02T03:04:05Z")
        self.assertIs(values[6]["bool_value"], True)
        self.assertEqual(values[7]["string_value"], "null")
        self.assertEqual(values[8]["string_value"], "uuid")

    def test_max_rows(self):
        proc = self.run_cli("query", "SELECT generate_series(1, 10)",
                            "--max-rows", "3")
        self.assert_exit(proc, 1)
        self.assertTrue(proc.stderr.startswith("error: RESOURCE_EXHAUSTED: "),
                        proc.stderr)

    def test_read_only(self):
        proc = self.run_cli("query", "CREATE TABLE cli_read_only (a int)",
                            "--read-only")
        self.assert_exit(proc, 1)
        self.assertIn("error: PERMISSION_DENIED: ", proc.stderr)
        self.assertIn("  sqlstate: 25006\n", proc.stderr)

    # -- errors -------------------------------------------------------------

    def test_sql_error(self):
        proc = self.run_cli("query", "SELECT 1/0")
        self.assert_exit(proc, 1)
        self.assertEqual(proc.stdout, "")
        self.assertEqual(proc.stderr,
                         "error: INVALID_ARGUMENT: division by zero\n"
                         "  sqlstate: 22012\n")

    def test_sql_error_json(self):
        proc = self.run_cli("--json", "query", "SELECT 1/0")
        self.assert_exit(proc, 1)
        self.assertEqual(json.loads(proc.stderr),
                         {"code": "INVALID_ARGUMENT",
                          "message": "division by zero",
                          "sqlstate": "22012"})

    def test_sql_error_metadata(self):
        sql = ("DO $$ BEGIN RAISE EXCEPTION 'duplicate \"key\"' USING "
               "ERRCODE = '23505', DETAIL = 'Key (id)=(1) already exists.', "
               "HINT = 'use another id', CONSTRAINT = 'items_pkey'; END $$")
        proc = self.run_cli("query", sql)
        self.assert_exit(proc, 1)
        self.assertEqual(proc.stderr,
                         'error: ALREADY_EXISTS: duplicate "key"\n'
                         "  sqlstate: 23505\n"
                         "  constraint: items_pkey\n"
                         "  detail: Key (id)=(1) already exists.\n"
                         "  hint: use another id\n")
        proc = self.run_cli("--json", "query", sql)
        self.assert_exit(proc, 1)
        err = json.loads(proc.stderr)
        self.assertEqual(err["message"], 'duplicate "key"')
        self.assertEqual(err["metadata"]["constraint"], "items_pkey")

    def test_unreachable_server(self):
        # Port 1 on loopback: nothing listens there, so the connect is refused.
        proc = self.run_cli("--target", "127.0.0.1:1", "--timeout", "5s", "stats",
                            target=False)
        self.assert_exit(proc, 1)
        self.assertRegex(proc.stderr, r"^error: (UNAVAILABLE|DEADLINE_EXCEEDED): ")

    # -- usage --------------------------------------------------------------

    def test_usage_errors(self):
        cases = [
            ([], "no command given"),
            (["frobnicate"], 'unknown command "frobnicate"'),
            (["stats", "--bogus"], "unknown flag --bogus"),
            (["query"], "exactly one SQL argument"),
            (["query", "SELECT 1", "extra"], "exactly one SQL argument"),
            (["query", "SELECT $1", "--param", "int:forty"], 'not a valid int64: "forty"'),
            (["query", "SELECT $1", "--param", "bytes:xyz"], "not a valid hex byte string"),
            (["query", "SELECT $1", "--param", "ts:yesterday"], "not a valid RFC 3339"),
            (["query", "SELECT 1", "--param-type", "uuid"], "must follow a --param"),
            (["query", "SELECT 1", "--max-rows", "-1"], "positive integer"),
            (["stats", "--count", "3"], 'flag --count belongs to "watch"'),
            (["watch", "--interval", "soon"], "positive duration"),
            (["stats", "--timeout"], "flag --timeout needs a value"),
            (["stats", "--json=yes"], "flag --json takes no value"),
        ]
        for args, message in cases:
            with self.subTest(args=args):
                proc = self.run_cli(*args)
                self.assert_exit(proc, 2)
                self.assertIn(message, proc.stderr)
                self.assertIn("usage: dbpool", proc.stderr)
                self.assertEqual(proc.stdout, "")

    def test_help(self):
        for args in (["--help"], ["help"], ["query", "--help"], ["-h"]):
            with self.subTest(args=args):
                proc = self.run_cli(*args, target=False)
                self.assert_exit(proc, 0)
                self.assertTrue(proc.stdout.startswith("usage: dbpool"), proc.stdout)
                self.assertIn("--param-type", proc.stdout)

    # -- stats --------------------------------------------------------------

    def test_stats_json(self):
        stats = self.run_json("stats")
        self.assertIsInstance(stats["max_connections"], int)
        self.assertGreater(stats["max_connections"], 0)
        self.assertIs(stats["database_reachable"], True)
        self.assertIn("acquires_immediate", stats)

    def test_stats_human(self):
        proc = self.run_cli("stats")
        self.assert_exit(proc, 0)
        fields = dict(line.split(": ", 1) for line in proc.stdout.splitlines())
        self.assertGreater(int(fields["max_connections"]), 0)
        self.assertEqual(fields["database_reachable"], "true")
        self.assertRegex(fields["acquire_p99"], r"^[0-9.]+ ms$")
        self.assertRegex(fields["time"], r"^\d{4}-\d\d-\d\dT.*Z$")

    def test_target_from_environment(self):
        proc = self.run_cli("stats", target=False,
                            env={"DBPOOL_TARGET": self.server.address})
        self.assert_exit(proc, 0)
        self.assertIn("max_connections: ", proc.stdout)

    # -- watch --------------------------------------------------------------

    def test_watch_count(self):
        proc = self.run_cli("watch", "--interval", "100ms", "--count", "3")
        self.assert_exit(proc, 0)
        lines = proc.stdout.splitlines()
        self.assertEqual(len(lines), 3, proc.stdout)
        for line in lines:
            self.assertRegex(line, WATCH_LINE_RE)

    def test_watch_json(self):
        proc = self.run_cli("--json", "watch", "--interval", "100ms", "--count", "2")
        self.assert_exit(proc, 0)
        lines = proc.stdout.splitlines()
        self.assertEqual(len(lines), 2, proc.stdout)
        for line in lines:
            self.assertGreater(json.loads(line)["max_connections"], 0)

    def test_watch_until_timeout(self):
        # An explicit --timeout ends the watch; that is not an error.
        proc = self.run_cli("watch", "--interval", "100ms", "--timeout", "1s")
        self.assert_exit(proc, 0)
        self.assertGreaterEqual(len(proc.stdout.splitlines()), 2, proc.stdout)


if __name__ == "__main__":
    unittest.main()
