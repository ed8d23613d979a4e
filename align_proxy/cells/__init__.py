"""One entry module per cell kind that is not a recipe run (`align_proxy.kinds.CellKind.entry`): each scores the
models its cell names and writes its metrics file through `align_proxy.run_metrics`, knowing nothing of the study
that runs it. A train cell is its recipe's script (`recipes/<name>.py`).

    python -m align_proxy.cells.proxy_tune --base ladder-l --expert DIR --small ladder-s ... --output_dir OUT
    python -m align_proxy.cells.best_of_n --policy ladder-s --reward_model DIR --n 64 ... --output_dir OUT
"""
