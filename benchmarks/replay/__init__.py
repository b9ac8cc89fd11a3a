"""The replay benchmark: whole searches replayed against curves whose answers are known.

  sources/     what a trial trains on: a recorded table (recorded.py, table.py: the format
               record_curves.py writes), a continuous GP model of a table with seed noise at a
               chosen level (model.py), YAHPO Gym's LCBench surrogate (lcbench.py; the files in
               data/lcbench/ with their licence)
  engine.py    a small TuneController on a simulated clock: calls searcher and scheduler in
               Ray Tune 2.60's order (PAUSE included), counts compute, tracks the incumbent
               the project's report would export, confirms and exports
  strategies.py, baselines.py   the project's default and the baselines (random, random +
               ASHA, TPE + median pruner, HyperBand, TPE without early stopping, the detection
               library's genetic tuner)
  analysis.py  paired-seed statistics: anytime mean rank, normalised regret, compute to random
               search's whole-budget quality, 95 % bootstrap intervals; the health accounting
  table_analysis.py   tie-break and confirmation analyses read off a recorded table
  cli.py       `python benchmarks/replay_search.py SOURCE ...`
"""
