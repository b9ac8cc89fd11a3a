"""refdet-tune: the search (Ray Tune + Optuna + ASHA). The only package that imports ray or optuna."""
