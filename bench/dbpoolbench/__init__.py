"""dbpool's benchmark tooling: bench/compare, bench/soak, bench/floor,
bench/max-rate and bench/waiters, as one package.

Run as `python3 -m dbpoolbench COMMAND` with bench/ on sys.path (the
launchers in bench/ do that); `render` re-renders a stored result.
"""
