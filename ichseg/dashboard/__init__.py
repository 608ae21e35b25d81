"""`ichseg dashboard`: the W&B workspace view of a sweep's group, built with `wandb_workspaces`.

`runs` reads what the sweep's runs logged from their run files, `view` builds the view and
refuses a panel naming a key no run logged, `publish` writes its spec (`--dry-run`) or saves it.
"""
