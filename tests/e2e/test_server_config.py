"""dbpool-server refuses a bad configuration before binding any port."""

import os
import subprocess
import unittest

import harness


class BadConfiguration(unittest.TestCase):
    def test_every_problem_is_listed_and_exit_code_is_2(self):
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        env["DB_POOL_IDLE_TIMEOUT_MS"] = "soon"
        proc = subprocess.run(
            [str(harness.server_bin()), "--grpc-port=0",
             "--db-pool-max-connections=0", "--no-such-flag=1"],
            env=env, capture_output=True, text=True, timeout=30)
        self.assertEqual(proc.returncode, 2, proc.stderr)
        for problem in ("DATABASE_URL", "DB_POOL_MAX_CONNECTIONS",
                        "DB_POOL_IDLE_TIMEOUT_MS", "--no-such-flag"):
            self.assertIn(problem, proc.stderr)
        self.assertNotIn("listening", proc.stdout)

    def test_unparsable_database_url_is_a_configuration_error(self):
        proc = subprocess.run(
            [str(harness.server_bin()), "--grpc-port=0",
             "--database-url=postgresql://[broken"],
            capture_output=True, text=True, timeout=30)
        self.assertEqual(proc.returncode, 2, proc.stderr)
        self.assertIn("DATABASE_URL", proc.stderr)
        self.assertNotIn("listening", proc.stdout)

    def test_enforced_connection_budget_that_cannot_fit_is_refused(self):
        # 200 max_connections less 3 superuser-reserved: 197 usable, and
        # 50 replicas of 4 connections need 200.
        cluster = harness.PgCluster.start(settings=("max_connections=200",))
        self.addCleanup(cluster.stop)
        env = dict(os.environ, DATABASE_URL=cluster.database_url,
                   DBPOOL_EXPECTED_REPLICAS="50",
                   DBPOOL_ENFORCE_CONNECTION_BUDGET="true")
        proc = subprocess.run(
            [str(harness.server_bin()), "--grpc-port=0", "--http-port=0",
             "--metrics-port=0", "--db-pool-max-connections=4"],
            env=env, capture_output=True, text=True, timeout=30)
        self.assertEqual(proc.returncode, 2, proc.stderr)
        self.assertIn("= 200 of 197 usable connections", proc.stderr)
        self.assertIn("lower DB_POOL_MAX_CONNECTIONS to 3 or fewer", proc.stderr)
        self.assertNotIn("listening", proc.stdout)

    def test_help_lists_the_settings(self):
        proc = subprocess.run([str(harness.server_bin()), "--help"],
                              capture_output=True, text=True, timeout=30)
        self.assertEqual(proc.returncode, 0)
        self.assertIn("DB_POOL_MAX_CONNECTIONS", proc.stdout)


if __name__ == "__main__":
    unittest.main()
