"""dbpool's benchmark tooling: bench/compare, bench/soak, bench/floor,
bench/max-rate, bench/waiters, bench/overload, bench/pipeline-depth and
bench/batch, as one package.

Run as `python3 -m dbpoolbench COMMAND` with bench/ on sys.path (the
launchers in bench/ do that); `render` re-renders a stored result.
"""
